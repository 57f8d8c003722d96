"""The ASGI app the MediCLIP MONAI Label server runs: MONAI Label's own FastAPI app, except for the two
routes that start a training (``POST /train/{model}``, ``POST /train/``), served here after checking the request.

MONAI Label hands a train request to a new process at once: a bad option fails there seconds later and a
client sees only "ERROR"; two requests sent together both run, one after the other. Here the options are
read and checked first (``FewShotTrainTask.check_request``: types and ranges, the backbone's weights, enough
normal studies) and a request made while a training is queued or running is refused: HTTP 422 (a bad
option, named) or 409 (what stands in the way), whose reason 3D Slicer shows in its error dialog. The
routes keep MONAI Label's authentication (its admin role, as its own routes).

``python -m mediclip_monai.label start_server`` serves it (``__main__.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from monailabel.app import app as monailabel_app
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks
from starlette.routing import Match

from mediclip_monai.label.options import OptionError
from mediclip_monai.label.train_task import TrainingRefused

__all__ = ["app", "start_training"]

ACTIVE = ("SUBMITTED", "RUNNING")


def start_training(model: str, params: Any, run_sync: bool = False) -> dict:
    """Check a train request of ``model`` and start it (MONAI Label's background task); the task.

    Raises:
        HTTPException: 404 no such model; 409 a training is queued or running, or one cannot run now;
            422 an option that is not accepted.
    """
    instance = app_instance()
    trainer = instance.trainer(model)
    if trainer is None:
        raise HTTPException(status_code=404, detail=f"no train task {model[:80]!r} (GET /info/ lists them)")
    active = [task for task in tasks("train") if task["status"] in ACTIVE]
    if active:
        raise HTTPException(
            status_code=409,
            detail=f"a training is already {active[0]['status'].lower()} (since {active[0]['start_ts']}); wait "
            "for it to end, or stop it (3D Slicer: Stop Training; DELETE /train/)",
        )
    if not isinstance(params, dict):
        raise HTTPException(status_code=422, detail=f"{model}: the options are a JSON object, not {params!r:.80}")
    try:
        options = trainer.check_request(params, instance.datastore())
    except OptionError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    except TrainingRefused as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    # Checked and started without an await in between: no other request runs in between.
    task, detail = AsyncTask.run("train", request={"model": model, **options}, force_sync=run_sync)
    if task is None:
        raise HTTPException(status_code=409, detail=detail)
    return task


# Only the routes that start a training; everything else, the lifespan included, goes to MONAI Label's app.
train_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
train_app.add_middleware(
    CORSMiddleware,
    allow_origins=[str(origin) for origin in settings.MONAI_LABEL_CORS_ORIGINS] or ["*"],
    allow_credentials=True,
    allow_methods=["*"],
    allow_headers=["*"],
)
TRAIN = f"{settings.MONAI_LABEL_API_STR}/train"


@train_app.post(TRAIN + "/{model}", summary="Start a training of the model (options checked first)")
async def api_run_model(
    model: str,
    params: dict | None = None,
    run_sync: bool = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    return start_training(model, params or {}, run_sync)


@train_app.post(TRAIN + "/", summary="Start a training of every model (options per model: {model: {...}})")
async def api_run(
    params: dict | None = None,
    run_sync: bool = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    params = params or {}
    models = list(app_instance().info()["trainers"])
    unknown = [key for key in params if key not in models]
    if unknown:
        raise HTTPException(status_code=422, detail=f"{unknown[0][:80]}: no such model; the models are {models}")
    return {
        model: {"result": start_training(model, params.get(model, {}), run_sync), "detail": None} for model in models
    }


async def app(scope, receive, send) -> None:
    """The server's ASGI app: `train_app` for the requests that start a training, MONAI Label's for the rest."""
    if scope["type"] == "http" and any(route.matches(scope)[0] == Match.FULL for route in train_app.routes):
        await train_app(scope, receive, send)
    else:
        await monailabel_app(scope, receive, send)
