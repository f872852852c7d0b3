"""A local web viewer (`medfake view --serve`) and a reader-study kit (`medfake reader-study`).

Both are FastAPI apps served by uvicorn on 127.0.0.1 with a random token in the URL (server.py); the pages
are plain HTML/JS under static/ (no build step) that receive raw int16 slices and window them in the browser.
"""
