"""The bench's HTTP floor: the least a POST answered with JSON costs a tornado service here.

    python bench/tornado_floor.py PORT

A bare tornado app on 127.0.0.1:PORT whose one handler answers any POST with a JSON object the
size of a kernel model, as jkp's pop does; no auth, no logging, no metrics. Not a jkp: the
floor under jkp's own HTTP handling, measured beside its pops by bench/run.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from tornado import web

MODEL = json.dumps(
    {
        "id": str(uuid.uuid4()),
        "name": "python_kubernetes",
        "last_activity": "2026-11-28T00:00:00.000000Z",
        "execution_state": "idle",
        "connections": 0,
    }
)


class AnswerHandler(web.RequestHandler):
    def post(self, _path: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(MODEL)


async def main(port: int) -> None:
    app = web.Application([(r"(.*)", AnswerHandler)], log_function=lambda handler: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
