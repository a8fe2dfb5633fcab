from actors.ledger import DONE, DUPLICATE, NEW, IdLedger


def test_claims_new_done_duplicate_and_retry_idempotent():
    led = IdLedger(done_ids={"old"})
    assert led.claim(["a", "old", "b", "a"], "f1") == [NEW, DONE, NEW, DUPLICATE]
    # A retried task (same ids, same shard) gets the same answers and is counted once.
    assert led.claim(["a", "old", "b", "a"], "f1") == [NEW, DONE, NEW, DUPLICATE]
    # The same ids from another shard are duplicates.
    assert led.claim(["a", "c"], "f2") == [DUPLICATE, NEW]
    assert led.stats() == {NEW: 3, DONE: 1, DUPLICATE: 2}
