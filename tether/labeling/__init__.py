"""Human preference labeling: tasks in, a browser page for labelers, preferences out.

- ``tasks``: the tasks file (prompt + K responses), validated row by row
- ``store``: SQLite (WAL) holding labelers, tasks and answers; every answer committed on submit
- ``server``: FastAPI app + static page (``static/``), token auth, same-origin writes
- ``export`` / ``stats``: preference JSONL for ``tether train-rm``; agreement between labelers
- ``simulated``: Python functions standing in for people, through the same store

The web server's dependencies (fastapi, uvicorn) are imported only by ``server``.
"""
