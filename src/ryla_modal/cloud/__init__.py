"""Everything that runs on or builds for Modal: settings, image, GPU worker, Dict store, executor.

The only package (with ``modal_apps/``) that imports ``modal``; nothing on the client's import
path imports it.
"""
