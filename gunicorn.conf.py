"""gunicorn settings for the audio server (threading mode: one process, many threads).

    gunicorn -c gunicorn.conf.py audioserver.wsgi:app

One worker process: tasks, Socket.IO rooms and the replay store live in it
(more processes would need sticky sessions and a message queue). Every open
WebSocket holds one thread, idle or not, so `threads` bounds the connected
clients plus the requests in progress: size GUNICORN_THREADS for the clients
expected at once, plus AUDIO_MAX_UPLOADS, plus a margin. A request being read
holds a thread too, so slow clients belong to nginx in front, which reads
requests whole and times them out (README, Deployment). The chunks are
processed by the app's own pool (AUDIO_WORKERS), not by these threads.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5001')}"
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "100"))
timeout = 0  # a WebSocket is a long request: never kill the worker for it
graceful_timeout = 10
accesslog = None


def post_worker_init(worker):
    """At SIGTERM, stop running tasks first (reason "shutdown", partial results kept).

    gunicorn would otherwise let them run through its graceful timeout; stopping
    them while the connections are still open lets processing_stopped reach the
    clients, and a restart serves the partial results.
    """
    import signal

    from audioserver.wsgi import app

    gunicorns_own = signal.getsignal(signal.SIGTERM)

    def stop_tasks_then_exit(signum, frame):
        app.extensions["uploads"].close()  # uploads in progress end, their .part files go
        app.extensions["audio_engine"].shutdown()
        gunicorns_own(signum, frame)

    signal.signal(signal.SIGTERM, stop_tasks_then_exit)
