"""Majority voting where answers the checker calls equal are one vote.

Answers are grouped in order: identical answers (after ``key``, the protocol's normalisation) are
one class, even answers that normalise to nothing (as the Llemma scorer counted them); any other
answer joins the first class whose first member it equals, else starts a class. The largest class
wins; on a tie, the class whose first member came first. Unanswered samples (None) do not vote.
Raw-string voting would count "\\frac12" and "0.5" as two answers.
"""

from typing import Callable, Optional


def equivalence_classes(answers: list[Optional[str]], equal: Callable[[str, str], bool],
                        key: Callable[[str], object] = lambda a: a) -> list[list[int]]:
    """Indices of answers grouped into classes, each class in sample order, classes by first member."""
    classes: list[list[int]] = []
    by_key: dict = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        k = key(answer)
        if k in by_key:
            by_key[k].append(i)
            continue
        for members in classes:
            first = answers[members[0]]
            assert first is not None, "classes hold answered samples only"
            if equal(answer, first):
                members.append(i)
                break
        else:
            members = [i]
            classes.append(members)
        by_key[k] = members
    return classes


def majority_vote(answers: list[Optional[str]], equal: Callable[[str, str], bool],
                  key: Callable[[str], object] = lambda a: a) -> Optional[int]:
    """Index of the winning class's first member, or None if no sample has an answer."""
    classes = equivalence_classes(answers, equal, key)
    if not classes:
        return None
    return max(classes, key=lambda members: (len(members), -members[0]))[0]
