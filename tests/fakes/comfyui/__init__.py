"""A ComfyUI stand-in that speaks the protocol recorded in ``shared/comfyui-protocol/``.

``server`` is the aiohttp app and ``main()``; ``engine`` the queue, cache and executor (one worker
thread, as in ComfyUI); ``validation`` ComfyUI's ``validate_prompt`` with the same error shapes;
``nodes`` a few model-free nodes on Pillow.  ``tests/fakes/fake_comfyui.py`` is the entry script.
"""
