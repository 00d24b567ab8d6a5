"""consumer/ledger.py: what may be committed, after served, cut-off and frozen scrapes."""

from consumer.aggregate import Buckets, Totals
from consumer.ledger import Ledger
from consumer.pipeline import Counted

TP = ("t", 0)
BUCKETS = Buckets((1.0,), (1.0,), (1.0,))


def counted(next_offset: int) -> Counted:
    totals = Totals(BUCKETS)
    return Counted({("w", "p"): totals}, next_offset, 0.0, 1, 0, 0, 0)


def ledger() -> tuple[Ledger, list[object]]:
    published: list[object] = []
    return Ledger(published.append), published


def test_only_a_served_fold_makes_its_positions_committable() -> None:
    book, _ = ledger()
    book.record(TP, 0, counted(10))
    fold = book.fold()
    assert book.committable() == {}
    book.served(fold)
    assert book.committable() == {TP: 10}


def test_a_cut_off_answer_commits_nothing_after_a_scrape_but_is_handed_over_as_published() -> None:
    """Its counts are published: the next scrape shows them. A hand-over that committed
    only the served position would have the next owner count them again."""
    book, published = ledger()
    book.record(TP, 0, counted(10))
    book.served(book.fold())
    book.record(TP, 10, counted(20))
    book.abandoned(book.fold())  # the scraper hung up mid-answer
    assert len(published) == 2
    assert book.committable() == {TP: 10}
    assert book.committable(published=True) == {TP: 20}
    assert book.withdraw([TP]) == {TP: 20}


def test_a_frozen_fold_publishes_nothing_and_keeps_the_publication_number() -> None:
    book, published = ledger()
    book.record(TP, 0, counted(10))
    first = book.fold()
    book.record(TP, 10, counted(20))
    book.freeze()
    frozen = book.fold()
    assert frozen.publication == first.publication == 1
    assert frozen.covered == ()
    assert len(published) == 1
