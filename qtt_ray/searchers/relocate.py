"""Resume an experiment whose folder moved: new trials go to the new folder.

``Tuner.restore(path)`` re-points the trials it restores to ``path``, but Ray's
``SearchGenerator`` restores the ``Experiment`` it pickled in the first session, whose storage
still names the old folder, and creates every NEW trial there (Ray 2.60: after ``mv`` the old
folder is gone and the resumed run fails saving the first new trial's checkpoint; after ``cp``
it writes into the original). This generator takes the storage folder of the session that runs.
"""

from __future__ import annotations

import copy
from typing import Any

from ray.tune.search import Searcher, SearchGenerator


class RelocatedSearchGenerator(SearchGenerator):
    """``SearchGenerator`` whose restored experiment writes under ``storage_fs_path``."""

    def __init__(self, searcher: Searcher, storage_fs_path: str) -> None:
        super().__init__(searcher)
        self.storage_fs_path = storage_fs_path

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        experiment: Any = self._experiment  # Ray declares it None until restored
        storage = getattr(experiment, "storage", None)
        if storage is None or storage.storage_fs_path == self.storage_fs_path:
            return
        moved = copy.copy(storage)
        moved.storage_fs_path = self.storage_fs_path
        experiment.storage = moved
        experiment.spec["storage"] = moved  # what each new trial's storage is copied from
