"""The fast lane of the hot path: POST /v1/rank straight to its endpoint.

Through FastAPI, a request to /v1/rank passes Starlette's middleware stack (server errors,
telemetry, body limit, exception handling, exit stack), the router and FastAPI's request
handling before the endpoint runs: about a tenth of a decision's CPU (docs/service.md).
`DecisionApp` sends exactly `POST /v1/rank` down this lane instead: the same `ObserveAndLimit`
(body limit, metrics, access log), the same endpoint, and errors answered by the app's own
exception handlers. Everything else, /v1/rank with any other method included, goes FastAPI's
way, and the route stays FastAPI's for the API document. The endpoint takes no FastAPI
parameters or dependencies (it reads its request itself), so both ways run the same code.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request

from service.http.routes.rank import rank

LANE_PATH, LANE_METHOD = "/v1/rank", "POST"


class DecisionApp(FastAPI):
    """FastAPI with the /v1/rank lane; `lane` is set by `create_app` (None: no lane)."""

    lane = None

    async def __call__(self, scope, receive, send) -> None:
        if self.lane is not None and scope["type"] == "http" and scope["path"] == LANE_PATH and scope["method"] == LANE_METHOD:
            scope["app"] = self
            await self.lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def rank_lane(self, scope, receive, send) -> None:
        """The endpoint, its errors answered as the exception middleware answers them."""
        request = Request(scope, receive)
        try:
            response = await rank(request)
        except Exception as err:
            response = await self._handler_of(err)(request, err)
        await response(scope, receive, send)

    def _handler_of(self, err: Exception):
        handlers = self.exception_handlers
        for cls in type(err).__mro__:
            if cls in handlers:
                return handlers[cls]
        return handlers[Exception]
