"""The model server on a thread of the test process (real HTTP on loopback, real uvicorn)."""

from __future__ import annotations

import threading
from typing import Any

from support.servers import free_port, wait_for_port


class Running:
    """A uvicorn server on a thread of this process, with its own prediction log folder."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        from crispflow.serving.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        wait_for_port(self.port, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
