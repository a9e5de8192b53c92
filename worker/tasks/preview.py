"""The preview task (`ftaas preview-worker` consumes its queue): claim the preview row, format the file's first rows
with the model's tokenizer, store the answer. In the worker process itself, not a child: it loads a tokenizer
only (no weights, no GPU), and keeps the last few loaded for the next previews."""

from __future__ import annotations

import logging
from functools import lru_cache
from itertools import islice

from app.core.celery_app import PREVIEW_TASK
from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_state import claim_preview, finish_preview
from app.core.local_cache import LocalCache
from app.core.storage import upload_key
from app.core.tables import File, Preview, PreviewStatus
from app.datasets import iter_records
from worker.tasks.runtime import celery

log = logging.getLogger("ftaas.worker")


@lru_cache(maxsize=4)
def _tokenizer(source: str):
    from worker.training.modeling import load_tokenizer

    return load_tokenizer(source)


@celery.task(name=PREVIEW_TASK)
def make_preview(preview_id: str) -> str:
    return run_preview(preview_id)


def run_preview(preview_id: str) -> str:
    from worker.training.modeling import ModelRefused
    from worker.training.preview import MAX_ROWS_COUNTED, PreviewRowError, preview

    Session = get_sessionmaker()
    with Session() as s:
        if not claim_preview(s, preview_id):
            return "skipped"
        row = s.get(Preview, preview_id)
        file = s.get(File, row.file_id)
        source, max_len, num_rows = row.model_source, row.max_seq_length, row.num_rows
        fmt, mapping, separator = file.format, file.column_mapping, file.completion_separator
        key, sha256 = upload_key(file.storage_name), file.sha256
    status, result, error = PreviewStatus.failed, None, None
    try:
        path = LocalCache.from_settings().fetch(key, sha256=sha256)
        records = iter_records(path, fmt, column_mapping=mapping, completion_separator=separator, with_lines=True)
        result = preview(_tokenizer(source), islice(records, MAX_ROWS_COUNTED), max_len, num_rows)
        status = PreviewStatus.succeeded
    except PreviewRowError as exc:
        error = {**error_body("invalid_training_row", str(exc), param=exc.field), "line": exc.line}
    except ModelRefused as exc:
        error = error_body(exc.code, str(exc))
    except Exception as exc:  # a preview that cannot be made fails rather than staying running
        log.exception("preview %s failed", preview_id)  # the details (server paths among them) stay in the log
        error = error_body("preview_failed", f"the preview could not be made ({type(exc).__name__}); try again")
    with Session() as s:
        finish_preview(s, preview_id, status, result=result, error=error)
    return str(status)
