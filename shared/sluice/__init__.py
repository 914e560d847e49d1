"""sluice"""
