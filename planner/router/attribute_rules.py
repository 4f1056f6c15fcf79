"""spaCy's attribute ruler rules, applied without the generic ``Matcher``.

The attribute ruler of ``en_core_web_sm`` maps each fine-grained tag to its coarse POS and
fixes a few words ("something" tagged NN is a PRON, "is" tagged VBZ an AUX, ...): about a
hundred and thirty one-token rules, each a test of TAG, LOWER, DEP or IS_SPACE. spaCy runs
them through its general token ``Matcher``, which tries every rule at every token: about a
fifth of the router's whole batch parse went there, for a table look-up. ``AttributeRules``
reads the same rules from the ruler and applies them with dictionaries keyed by tag and
lower-cased text, with spaCy's semantics: every rule is tested on the annotations as they
were before the ruler ran, and where several rules set one attribute of a token the one
added last wins. A rule in a form it does not know (an operator, another attribute, a
test other than equality, ``IN`` or ``NOT_IN``) makes ``compile_rules`` return ``None``
and the caller keeps spaCy's ruler. The router's tests compare both on reference prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

# Pattern keys the rules may test (read from the doc as spaCy's Matcher reads them: string
# ids, 0 for "unset", and 0/1 for IS_SPACE).
_READS = ("TAG", "LOWER", "DEP", "IS_SPACE")
# Attributes a rule may set here (the router's ruler keeps only these: see features.py).
_SETS = ("TAG", "POS")
_EQ, _IN, _NOT_IN = 0, 1, 2


def _value_id(key: str, value: Any) -> int | None:
    from spacy.strings import get_string_id

    if key == "IS_SPACE":
        return int(value) if isinstance(value, bool) else None
    return get_string_id(value) if isinstance(value, str) else None


def _test(key: str, value: Any) -> tuple[int, Any] | None:
    if isinstance(value, Mapping):
        if len(value) != 1:
            return None
        (op, items), = value.items()
        if op not in ("IN", "NOT_IN") or not isinstance(items, (list, tuple)):
            return None
        ids = [_value_id(key, v) for v in items]
        if None in ids:
            return None
        return (_IN if op == "IN" else _NOT_IN), frozenset(ids)
    value_id = _value_id(key, value)
    return None if value_id is None else (_EQ, value_id)


class _Rule:
    """One pattern of one ruler rule: the tests per pattern token, the token it sets."""

    __slots__ = ("order", "tests", "offset", "length", "tag", "pos")

    def __init__(self, order: int, tests: list[list[tuple[int, int, Any]]], index: int,
                 tag: str | None, pos: int | None) -> None:
        self.order = order  # the ruler's rule number: a later rule wins
        self.tests = tests  # per pattern token: (column, kind, value id or ids)
        self.length = len(tests)
        self.offset = index if index >= 0 else self.length + index  # set token - start
        self.tag, self.pos = tag, pos

    def matches(self, columns: list[list[int]], target: int, n: int) -> bool:
        start = target - self.offset
        if start < 0 or start + self.length > n:
            return False
        for j, tests in enumerate(self.tests):
            for column, kind, value in tests:
                got = columns[column][start + j]
                if kind == _EQ:
                    if got != value:
                        return False
                elif (got in value) != (kind == _IN):
                    return False
        return True


class AttributeRules:
    """The ruler's rules, indexed: a token is tested only against the rules filed under
    its tag and lower-cased text, or under one of its values, and the few rules that name
    no value the token must have."""

    def __init__(self, rules: Sequence[_Rule]) -> None:
        from spacy.attrs import IDS

        self._columns = [IDS[key] for key in _READS]
        self._set = [IDS["TAG"], IDS["POS"]]
        # (tag, lower) pairs, then (column, value) pairs tested at the token a rule sets;
        # rules that test only NOT_IN there are tried on every token.
        self._by_tag_lower: dict[tuple[int, int], list[_Rule]] = {}
        self._by_value: dict[tuple[int, int], list[_Rule]] = {}
        self._other: list[_Rule] = []
        for rule in rules:
            for table, keys in self._index_keys(rule):
                for key in keys:
                    table_of = self._by_tag_lower if table == "tag_lower" else self._by_value
                    table_of.setdefault(key, []).append(rule)
                break
            else:
                self._other.append(rule)

    @staticmethod
    def _index_keys(rule: _Rule) -> Iterator[tuple[str, list[tuple[int, int]]]]:
        """Where to file a rule: the values its set token must have, most specific first."""
        tests = {column: (kind, value) for column, kind, value in rule.tests[rule.offset]
                 if kind != _NOT_IN}

        def values(column: int) -> list[int]:
            kind, value = tests[column]
            return [value] if kind == _EQ else sorted(value)

        tag, lower = _READS.index("TAG"), _READS.index("LOWER")
        if tag in tests and lower in tests:
            yield "tag_lower", [(t, w) for t in values(tag) for w in values(lower)]
        for column in sorted(tests):
            yield "value", [(column, v) for v in values(column)]

    def __call__(self, doc: Any) -> Any:
        """Set the rules' attributes on ``doc`` in place, as spaCy's ruler would."""
        n = len(doc)
        if not n:
            return doc
        columns = doc.to_array(self._columns).T.tolist()  # one list of ids per key
        tags, lowers = columns[0], columns[1]
        by_tag_lower, by_value, other = self._by_tag_lower, self._by_value, self._other
        empty: list[_Rule] = []
        changes = []
        for i in range(n):
            tag_rule = pos_rule = None
            groups = [by_tag_lower.get((tags[i], lowers[i]), empty), other]
            groups += [by_value.get((c, col[i]), empty) for c, col in enumerate(columns)]
            for group in groups:
                for rule in group:
                    if not rule.matches(columns, i, n):
                        continue
                    if rule.tag is not None and (tag_rule is None or
                                                 tag_rule.order < rule.order):
                        tag_rule = rule
                    if rule.pos is not None and (pos_rule is None or
                                                 pos_rule.order < rule.order):
                        pos_rule = rule
            if tag_rule is not None or pos_rule is not None:
                changes.append((i, tag_rule, pos_rule))
        if changes:
            values = doc.to_array(self._set)
            for i, tag_rule, pos_rule in changes:
                if tag_rule is not None:
                    values[i, 0] = doc.vocab.strings.add(tag_rule.tag)
                if pos_rule is not None:
                    values[i, 1] = pos_rule.pos
            doc.from_array(self._set, values)
        return doc

    def pipe(self, docs: Iterable[Any], batch_size: int = 0) -> Iterator[Any]:
        """``__call__`` over a stream of docs (the signature of a spaCy component's pipe)."""
        for doc in docs:
            yield self(doc)


def compile_rules(patterns: Iterable[Mapping[str, Any]]) -> AttributeRules | None:
    """``AttributeRules`` from a ruler's ``patterns``, or ``None`` if one is not supported."""
    from spacy.parts_of_speech import IDS as POS_IDS

    rules: list[_Rule] = []
    for order, rule in enumerate(patterns):
        attrs = dict(rule.get("attrs", {}))
        if not attrs or set(attrs) - set(_SETS):
            return None
        tag, pos = attrs.get("TAG"), attrs.get("POS")
        if (tag is not None and not isinstance(tag, str)) or (
                pos is not None and (not isinstance(pos, str) or pos not in POS_IDS)):
            return None
        for pattern in rule["patterns"]:
            tests: list[list[tuple[int, int, Any]]] = []
            for spec in pattern:
                token_tests = []
                for key, value in spec.items():
                    test = _test(key, value) if key in _READS else None
                    if test is None:
                        return None
                    token_tests.append((_READS.index(key), *test))
                tests.append(token_tests)
            index = int(rule.get("index", 0))
            if not tests or not -len(tests) <= index < len(tests):
                return None
            rules.append(_Rule(order, tests, index, tag,
                               None if pos is None else POS_IDS[pos]))
    return AttributeRules(rules)
