"""Re-point a local MLflow store's artifact paths after its run folder moved.

MLflow stores an experiment's artifact location, and each run's artifact URI, as absolute
paths. A run folder holds its sqlite database and its ``mlartifacts/`` side by side, so after
``mv runs/a /data/a`` the database still names ``runs/a/mlartifacts``: ``mlflow ui`` finds none
of the artifacts that moved with it, and a resumed run would write new ones outside its folder.
MLflow has no API to change an experiment's artifact location, so this edits the two columns
through MLflow's own SQLAlchemy store and models (the schema MLflow itself migrates).
"""

from __future__ import annotations


def relocate_artifacts(db_uri: str, experiment_id: str, old: str, new: str) -> int:
    """Replace the prefix ``old`` by ``new`` in the experiment's artifact location and in
    the artifact URI of each of its runs; returns how many runs changed."""
    moved = _rewrite(db_uri, experiment_id, old, new)
    _forget_cached_repositories(moved)
    return len(moved)


def _rewrite(db_uri: str, experiment_id: str, old: str, new: str) -> list[str]:
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy.orm import Session

    old, new = old.rstrip("/"), new.rstrip("/")
    store = SqlAlchemyStore(db_uri, new)  # checks that the schema is the one MLflow expects
    try:
        with Session(store.engine) as session, session.begin():  # one transaction
            experiment = session.query(SqlExperiment).filter(
                SqlExperiment.experiment_id == int(experiment_id)).one()
            experiment.artifact_location = new  # type: ignore[assignment]  # a Column
            moved = []
            for run in session.query(SqlRun).filter(
                    SqlRun.experiment_id == int(experiment_id)):
                uri = str(run.artifact_uri or "")
                if uri == old or uri.startswith(old + "/"):
                    run.artifact_uri = new + uri[len(old):]  # type: ignore[assignment]
                    moved.append(str(run.run_uuid))
        return moved
    finally:
        store.engine.dispose()


def _forget_cached_repositories(run_ids: list[str]) -> None:
    """MLflow caches each run's artifact repository per process, by run id: a process that
    logged to a run before the rewrite would keep writing to the old folder."""
    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:  # a version without the cache
        return
    cache = getattr(utils, "_artifact_repos_cache", None)
    for run_id in run_ids:
        if cache is not None and hasattr(cache, "pop"):
            cache.pop(run_id, None)
