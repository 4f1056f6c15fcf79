"""spaCy's ``tok2vec`` stage with its per-token embedding computed once per distinct token.

``tok2vec`` has two halves: an embedding that sees one token at a time (hash embeddings of
its NORM, PREFIX, SUFFIX, SHAPE, SPACY and IS_SPACE ids, a maxout layer, a layer norm) and
a convolutional encoder over each token's neighbours. The first half is a pure function
of the token's six ids, and prompts repeat the same few thousand words, yet it cost about
a quarter of ``tok2vec`` (a sixth of a single prompt's parse). ``CachedTok2Vec`` keeps the
embedded row of every id tuple it has seen (up to ``max_rows``, then starts over) and runs
only the encoder on the assembled rows, setting ``doc.tensor`` as the spaCy stage does (the
tagger and parser read it from there).

Rows not yet cached are embedded in blocks padded to ``BLOCK`` rows, so a row's value does
not depend on which other tokens came with it: a product with few rows takes another code
path in OpenBLAS, whose last bits can differ. Against the plain stage a row can therefore
differ in its last bits where spaCy embedded a prompt of six tokens or fewer on its own;
on the 9,999 reference prompts no tag, dependency or feature changed (docs/router.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

BLOCK = 64  # rows per embedding product (padded): far above OpenBLAS's small-matrix path
_EMBED_LAYERS = ("extract_features", "list2ragged")


class CachedTok2Vec:
    """A drop-in for the ``tok2vec`` pipeline stage (``__call__`` and ``pipe``)."""

    def __init__(self, embed: Any, encode: Any, max_rows: int = 1 << 15) -> None:
        from thinc.api import chain

        self._columns = embed.layers[0].attrs["columns"]
        self._embed_rows = chain(*embed.layers[2:-1])  # Ragged ids -> Ragged rows
        self._encode = encode
        self._width = embed.get_dim("nO")
        self.max_rows = max_rows
        self._lock = threading.Lock()  # parses on several threads share the table
        self._index: dict[bytes, int] = {}
        self._table = np.zeros((256, self._width), dtype=np.float32)  # rows [0, len(index))

    @classmethod
    def wrap(cls, component: Any, max_rows: int = 1 << 15) -> CachedTok2Vec | None:
        """The cached stage for a spaCy ``tok2vec`` component, or ``None`` when its model is
        not the embed-then-encode chain this class knows (the caller keeps spaCy's)."""
        model = getattr(component, "model", None)
        layers = getattr(model, "layers", ())
        if len(layers) != 2:
            return None
        embed, encode = layers
        names = [layer.name for layer in getattr(embed, "layers", ())]
        if (len(names) != 5 or tuple(names[:2]) != _EMBED_LAYERS or names[-1] != "ragged2list"
                or "columns" not in embed.layers[0].attrs or not embed.has_dim("nO")):
            return None
        return cls(embed, encode, max_rows)

    @property
    def cached_rows(self) -> int:
        return len(self._index)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        """Embedded rows of distinct id tuples, computed in padded ``BLOCK``-row products."""
        from thinc.types import Ragged

        n = len(ids)
        padded = -(-n // BLOCK) * BLOCK
        if padded != n:
            ids = np.concatenate([ids, np.repeat(ids[:1], padded - n, axis=0)])
        out = np.empty((padded, self._width), dtype=np.float32)
        for start in range(0, padded, BLOCK):
            block = ids[start : start + BLOCK]
            rows = self._embed_rows.predict(Ragged(block, np.array([BLOCK], dtype="int32")))
            out[start : start + BLOCK] = rows.dataXd
        return out[:n]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The embedded row of every token (one id tuple a row), from the cache or computed."""
        keys = np.ascontiguousarray(ids).view(np.dtype((np.void, ids.shape[1] * 8))).ravel()
        with self._lock:
            return self._rows_locked(keys, ids.shape[1])

    def _rows_locked(self, keys: np.ndarray, n_columns: int) -> np.ndarray:
        index, key_list = self._index, keys.tolist()  # one bytes object a token
        where = [index.get(k, -1) for k in key_list]
        rows = self._table[np.maximum(where, 0)]  # the cached rows; the others come next
        missing = list(dict.fromkeys(k for k, w in zip(key_list, where, strict=True) if w < 0))
        if missing:
            fresh = self._embed(np.frombuffer(b"".join(missing), dtype=np.uint64)
                                .reshape(len(missing), n_columns))
            new = {k: i for i, k in enumerate(missing)}
            at = [j for j, w in enumerate(where) if w < 0]
            rows[at] = fresh[[new[key_list[j]] for j in at]]
            self._remember(missing, fresh)
        return rows

    def _remember(self, keys: list[bytes], fresh: np.ndarray) -> None:
        if len(keys) > self.max_rows:
            return  # more new tokens at once than the cache holds
        index = self._index
        if len(index) + len(keys) > self.max_rows:
            index.clear()  # start over: simpler than LRU, and no row depends on it
        base, end = len(index), len(index) + len(keys)
        if end > len(self._table):  # grow by doubling, at most to max_rows
            grown = np.zeros((min(max(2 * len(self._table), end), self.max_rows), self._width),
                             dtype=np.float32)
            grown[:base] = self._table[:base]
            self._table = grown
        self._table[base:end] = fresh
        for i, k in enumerate(keys):
            index[k] = base + i

    def _tensors(self, docs: list) -> list[np.ndarray]:
        lengths = [len(doc) for doc in docs]
        if not sum(lengths):
            return [np.zeros((0, self._width), dtype=np.float32) for _ in docs]
        ids = np.concatenate([doc.to_array(self._columns).reshape(len(doc), -1)
                              for doc in docs]).astype(np.uint64, copy=False)
        rows = self._rows(ids)
        pieces = np.split(rows, np.cumsum(lengths)[:-1])
        return self._encode.predict(pieces)

    def __call__(self, doc: Any) -> Any:
        doc.tensor = self._tensors([doc])[0]
        return doc

    def pipe(self, docs: Iterable[Any], batch_size: int = 256) -> Iterator[Any]:
        """Docs in batches of ``batch_size``: one encoder pass a batch, like spaCy's."""
        batch: list = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_size:
                yield from self._annotate(batch)
                batch = []
        if batch:
            yield from self._annotate(batch)

    def _annotate(self, docs: list) -> list:
        for doc, tensor in zip(docs, self._tensors(docs), strict=True):
            doc.tensor = tensor
        return docs
