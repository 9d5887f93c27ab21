"""When retention removed a sweep index's results: told from its record, as no mark is kept per index."""

from jobs import JobState, RunResult
from jobs.sweep import IndexRecord
from node.retention import index_results_removed_at

CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def test_an_index_results_are_removed_once_older_than_the_retention() -> None:
    record = IndexRecord(index=3, state=JobState.COMPLETED, result=RunResult(cid=CID), updated_at=100.0)
    assert index_results_removed_at(record, retention=10, now=109.9) is None  # still kept
    assert index_results_removed_at(record, retention=10, now=110.0) == 110.0
    assert index_results_removed_at(record, retention=10, now=5000.0) == 110.0  # when, not when asked
    inline = record.model_copy(update={"result": RunResult(stdout="42\n")})  # nothing published: nothing to remove
    assert index_results_removed_at(inline, retention=10, now=5000.0) is None
