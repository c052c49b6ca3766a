"""deviceplugin"""
