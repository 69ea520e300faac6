"""The LLM side of LLMI3D: the token sequence of a query, teacher-forced passes and generation.

After the image tokens each sample continues with its tail (model/llmi3d.py's docstring):

    [template middle with the query] [answer phrase, config.answer_types only] <pos>
        [Text3D numbers, heads.readout "text" only] [3D Query, when the read-out appends it]

Training feeds whole tails (`query_tails`, `run_teacher_forced`); inference feeds them after
an image's cached prefix (`prefix_context`), generating the answer phrase greedily when the LLM
answers first (`query_states`) and the Text3D numbers after <pos> (`text3d_outputs`). The
functions take the LLMI3D whose LLM, 3D Query embedding and read-out they use; the class
delegates to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import text3d
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.heads import Readout
from llmi3d_core.model.llm import LanguageModel
from llmi3d_core.model.losses import box_targets
from llmi3d_core.model.outputs import ImageContext, ImageFeatures, QueryStates


class SequenceModel(Protocol):
    """What these functions use of model/llmi3d.py's LLMI3D (which imports this module)."""

    config: ModelConfig
    llm: LanguageModel
    query_embedding: nn.Parameter
    readout: Readout
    prefix_ids: list[int]

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        ...


# answer policies of `locate`: "auto" lets the LLM decide (the paper), "ground" never answers,
# "answer" always generates an answer phrase first
ANSWER_POLICIES = ("auto", "ground", "answer")


def format_query(
    text: str,
    box_prompt: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    point_prompt: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> str:
    """Query text with the optional box / point prompt as normalised text coordinates.

    NaN (the dataset's "no prompt") and None both mean no prompt.
    """
    parts = [text.strip()]
    for name, values in (("box", box_prompt), ("point", point_prompt)):
        if values is None:
            continue
        numbers = [float(x) for x in values]
        if all(math.isfinite(x) for x in numbers):
            parts.append(f"({name}: [{', '.join(f'{x:.2f}' for x in numbers)}])")
    return " ".join(parts)


def rewind_cache(cache: Any, length: int) -> None:
    """Drop cached positions beyond `length` (transformers DynamicCache.crop takes a negative)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def embed_ids(model: SequenceModel, ids: Sequence[int]) -> torch.Tensor:
    """Ids -> (1, T, hidden)."""
    return model.llm.embed(torch.tensor([list(ids)], dtype=torch.long, device=model.device))


# ---------------------------------------------------------------------------------- training


def answer_ids(model: SequenceModel, query_type: str, answer: str) -> list[int]:
    """Token ids of the answer phrase a query of `query_type` is taught ([] for none)."""
    if query_type in model.config.answer_types and answer.strip():
        return model.llm.tokenize(answer.strip())
    return []


def text3d_ids(model: SequenceModel, batch: dict[str, Any], index: int) -> list[int]:
    """Token ids of sample `index`'s Text3D numbers, then EOS."""
    targets = box_targets(batch, model.config)
    values = {k: targets[k][index] for k in text3d.text_fields(model.config.heads)}
    text = text3d.format_numbers(values, model.config.heads)
    return [*model.llm.tokenize(" " + text), model.llm.eos_token_id]


def query_tails(
    model: SequenceModel, batch: dict[str, Any], with_text3d: bool
) -> tuple[list[list[int]], list[int]]:
    """Token ids after the image tokens for each sample, and each sample's middle length."""
    llm = model.llm
    tails, middles = [], []
    B = len(batch["query"])
    for i in range(B):
        query = format_query(batch["query"][i], batch["box_prompt"][i], batch["point_prompt"][i])
        middle = llm.tokenize(llm.template.render_middle(query))
        answer = answer_ids(model, batch["query_type"][i], batch.get("answer", [""] * B)[i])
        numbers = text3d_ids(model, batch, i) if with_text3d else []
        tails.append(middle + answer + [llm.pos_id] + numbers)
        middles.append(len(middle))
    return tails, middles


def run_teacher_forced(
    model: SequenceModel, image_tokens: torch.Tensor, tails: list[list[int]]
) -> tuple[torch.Tensor, int, list[int]]:
    """Embed prefix + image + tails (+ 3D Query), right-padded; run the LLM.

    Returns hidden (B, T, hidden), the position of the first tail token, and each sample's
    last position (the read-out anchor: the 3D Query, or <pos> / the last text token).
    """
    device = model.device
    B, N, H = image_tokens.shape
    longest = max(len(t) for t in tails)
    pad = [t + [0] * (longest - len(t)) for t in tails]
    tail_ids = torch.tensor(pad, dtype=torch.long, device=device)
    prefix = embed_ids(model, model.prefix_ids).expand(B, -1, -1)
    extra = 1 if model.readout.append_query else 0
    pieces = [prefix, image_tokens, model.llm.embed(tail_ids)]
    if extra:
        pieces.append(image_tokens.new_zeros(B, 1, H))
    embeds = torch.cat(pieces, dim=1)  # (B, T, H)
    start = len(model.prefix_ids) + N
    lengths = [start + len(t) + extra for t in tails]
    rows = torch.arange(B, device=device)
    if extra:
        query_pos = torch.tensor([n - 1 for n in lengths], device=device)
        embeds = embeds.index_put((rows, query_pos), model.query_embedding.expand(B, H))
    positions = torch.arange(embeds.shape[1], device=device)
    mask = (positions[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    hidden, _ = model.llm.hidden_states(embeds, attention_mask=mask)
    return hidden, start, [n - 1 for n in lengths]


def read_states(
    model: SequenceModel, hidden: torch.Tensor, start: int, middles: list[int], ends: list[int]
) -> QueryStates:
    """Read F_3D and the query words' hidden states out of a teacher-forced pass."""
    device = model.device
    B = hidden.shape[0]
    offset = model.readout.offset or -1  # from the end: -1 is the last token
    rows = torch.arange(B, device=device)
    index = torch.tensor([last + 1 + offset for last in ends], device=device)
    longest = max(middles)
    cols = start + torch.arange(longest, device=device)[None, :].expand(B, -1)
    mask = (
        torch.arange(longest, device=device)[None, :]
        < torch.tensor(middles, device=device)[:, None]
    )
    words = hidden[rows[:, None], cols.clamp(max=hidden.shape[1] - 1)]
    return QueryStates(f3d=hidden[rows, index], words=words, word_mask=mask)


def tail_loss(
    model: SequenceModel,
    hidden: torch.Tensor,
    start: int,
    tails: list[list[int]],
    middles: list[int],
) -> torch.Tensor:
    """Cross-entropy on the supervised tail tokens (answer, <pos>, Text3D numbers)."""
    rows = [i for i, tail in enumerate(tails) for _ in range(middles[i], len(tail))]
    positions = [p for i, tail in enumerate(tails) for p in range(middles[i], len(tail))]
    cols = [start + p - 1 for p in positions]  # the position predicting token p
    labels = [tails[i][p] for i, p in zip(rows, positions, strict=True)]
    logits = model.llm.logits(hidden[rows, cols])  # (M, V + 2)
    return nn.functional.cross_entropy(logits.float(), torch.tensor(labels, device=model.device))


# ---------------------------------------------------------------------------------- inference


def prefix_context(model: SequenceModel, features: ImageFeatures, index: int = 0) -> ImageContext:
    """Run the LLM over [prefix, <image>, image tokens] of one image and keep its KV cache."""
    single = features.select(torch.tensor([index], device=features.tokens.device))
    embeds = torch.cat([embed_ids(model, model.prefix_ids), single.tokens], dim=1)
    _, cache = model.llm.hidden_states(embeds, use_cache=True)
    return ImageContext(features=single, cache=cache, prefix_length=embeds.shape[1])


def _step(model: SequenceModel, context: ImageContext, embeds: torch.Tensor) -> torch.Tensor:
    """Feed (1, t, hidden) after the cached context; return hidden (1, t, hidden)."""
    hidden, _ = model.llm.hidden_states(embeds, cache=context.cache)
    return hidden


def _greedy(
    model: SequenceModel,
    context: ImageContext,
    first: int,
    stop: set[int],
    *,
    limit: int,
    first_prob: float = 1.0,
) -> tuple[list[int], list[float]]:
    """Greedy decoding from token `first` (probability `first_prob`) until a stop id or `limit`.

    Returns the emitted ids (without the stop id) and their probabilities; the cache holds
    every emitted id (not the stop id).
    """
    ids: list[int] = []
    probs: list[float] = []
    token, prob = first, first_prob
    while token not in stop and len(ids) < limit:
        ids.append(token)
        probs.append(prob)
        hidden = _step(model, context, embed_ids(model, [token]))
        distribution = torch.softmax(model.llm.logits(hidden[:, -1]).float(), dim=-1)[0]
        best = distribution.max(dim=-1)
        token, prob = int(best.indices), float(best.values)
    return ids, probs


def _tail_embeds(model: SequenceModel, ids: list[int]) -> torch.Tensor:
    """Embeddings of `ids` followed by the 3D Query when the read-out uses it: (1, t, H)."""
    embeds = embed_ids(model, ids)
    if model.readout.append_query:
        embeds = torch.cat([embeds, model.query_embedding.view(1, 1, -1)], dim=1)
    return embeds


# The rows of one batched pass are padded to the longest tail, and a box prompt's tail (~51
# tokens: its coordinates are spelled digit by digit) is 3-5x a caption's (~11-20), so the
# queries of an image run in groups of similar length: sorted, a new group whenever a tail is
# longer than LENGTH_SLACK x the group's shortest. Measured on the default model's LLM pass over
# the queries of 30 training images (2-core CPU, chunks of 8): 16.0 queries/s as one padded batch,
# 16.2 with slack 1.3, 18.0 with 1.6, 18.6 with 2.0 (smaller batches use the cores less well).
LENGTH_SLACK = 2.0


def length_groups(lengths: Sequence[int], slack: float | None = None) -> list[list[int]]:
    """Indices of `lengths` in groups of similar length, shortest first (see LENGTH_SLACK)."""
    slack = LENGTH_SLACK if slack is None else slack
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[index] <= slack * lengths[groups[-1][0]]:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def teacher_forced_states(
    model: SequenceModel, context: ImageContext, items: Sequence[dict[str, Any]]
) -> list[QueryStates]:
    """The states of dataset queries of one image (data/dataset.py items), training layout.

    Like LLMI3D.forward (the answer phrase of config.answer_types fed, not generated), but from
    the image's KV cache, the queries batched in groups of similar length (`length_groups`; the
    cache is repeated for each group and restored afterwards): what the pointer stage caches.
    """
    tails, middles = query_tails(
        model,
        {
            "query": [i["query"] for i in items],
            "box_prompt": [i["box_prompt"] for i in items],
            "point_prompt": [i["point_prompt"] for i in items],
            "query_type": [i["query_type"] for i in items],
            "answer": [i.get("answer", "") for i in items],
        },
        with_text3d=False,
    )
    states: dict[int, QueryStates] = {}
    for group in length_groups([len(t) for t in tails]):
        found = _states_after_cache(model, context, [tails[i] for i in group],
                                    [middles[i] for i in group])  # fmt: skip
        states.update(zip(group, found, strict=True))
    return [states[index] for index in range(len(items))]


def _states_after_cache(
    model: SequenceModel, context: ImageContext, tails: list[list[int]], middles: list[int]
) -> list[QueryStates]:
    """One batched pass of `tails` (right-padded) after the image's cached prefix."""
    device = model.device
    n = len(tails)
    extra = 1 if model.readout.append_query else 0
    lengths = [len(t) + extra for t in tails]
    longest = max(lengths)
    ids = torch.zeros(n, longest, dtype=torch.long, device=device)
    for row, tail in enumerate(tails):
        ids[row, : len(tail)] = torch.tensor(tail, device=device)
    embeds = model.llm.embed(ids)  # (n, T, H)
    if extra:
        rows = torch.arange(n, device=device)
        last = torch.tensor([length - 1 for length in lengths], device=device)
        embeds = embeds.index_put((rows, last), model.query_embedding.expand(n, -1))
    positions = torch.arange(context.prefix_length + longest, device=device)
    limit = torch.tensor([context.prefix_length + length for length in lengths])
    mask = (positions[None, :] < limit.to(device)[:, None]).long()
    cache = context.cache
    cache.batch_repeat_interleave(n)
    try:
        hidden, _ = model.llm.hidden_states(embeds, attention_mask=mask, cache=cache)
    finally:
        cache.batch_select_indices(torch.tensor([0], device=device))
        rewind_cache(cache, context.prefix_length)
    offset = model.readout.offset or -1
    return [
        QueryStates(
            f3d=hidden[row : row + 1, lengths[row] + offset],
            words=hidden[row : row + 1, : middles[row]],
            word_mask=torch.ones(1, middles[row], dtype=torch.bool, device=device),
        )
        for row in range(n)
    ]


def query_states(
    model: SequenceModel, context: ImageContext, query: str, policy: str = "auto"
) -> tuple[QueryStates | None, torch.Tensor, str, bool]:
    """Run one query on a prepared image: F_3D and the query words' states.

    Returns (the states, None for Text3D; the last hidden states (1, t, H); the answer
    phrase; whether it was generated). The cache is left extended by the query: the
    caller rewinds it to `context.prefix_length` (Text3D first generates its numbers).
    """
    if policy not in ANSWER_POLICIES:
        raise ConfigError(f"unknown answer policy {policy!r}; available: {ANSWER_POLICIES}")
    llm = model.llm
    pos, eos = llm.pos_id, llm.eos_token_id
    middle = llm.tokenize(llm.template.render_middle(query))
    hidden = _step(model, context, _tail_embeds(model, [*middle, pos]))
    words = hidden[:, : len(middle)]
    answer: list[int] = []
    # "ground" never answers, so it skips the LM head (a 49k-word matmul, ~10 % of a query)
    answered = False
    if policy != "ground":
        logits = llm.logits(hidden[:, len(middle) - 1]).float()
        first = int(logits.argmax(dim=-1))
        answered = policy == "answer" or first != pos
    if answered:
        rewind_cache(context.cache, context.prefix_length + len(middle))
        if first in (pos, eos):  # policy "answer" but the LLM would not answer
            candidates = logits[0, : llm.vocab_size].clone()
            candidates[eos] = float("-inf")
            first = int(candidates.argmax())
        answer, _ = _greedy(
            model, context, first, {pos, eos}, limit=model.config.llm.max_answer_tokens
        )
        # re-feed the last text token with <pos> so every read-out offset (the
        # text_feature one reads the token before <pos>) sees the training layout
        length = context.prefix_length + len(middle) + len(answer)
        rewind_cache(context.cache, length - 1)
        last = [*middle, *answer][-1]
        hidden = _step(model, context, _tail_embeds(model, [last, pos]))
    states = None
    if model.readout.offset is not None:
        states = QueryStates(
            f3d=hidden[:, model.readout.offset],
            words=words,
            word_mask=torch.ones(words.shape[:2], dtype=torch.bool, device=model.device),
        )
    return states, hidden, llm.decode(answer).strip(), answered


def text3d_outputs(
    model: SequenceModel, context: ImageContext, hidden: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Generate and parse the Text3D numbers after <pos>; score = mean token probability."""
    distribution = torch.softmax(model.llm.logits(hidden[:, -1]).float(), dim=-1)[0]
    prob, first = distribution.max(dim=-1)
    ids, probs = _greedy(
        model,
        context,
        int(first),
        {model.llm.eos_token_id},
        limit=model.config.llm.max_text_tokens,
        first_prob=float(prob),
    )
    outputs = text3d.parse_numbers(model.llm.decode(ids), model.config.heads)
    mean_log = sum(math.log(max(p, 1e-9)) for p in probs) / len(probs)
    confidence = min(max(math.exp(mean_log), 1e-6), 1 - 1e-6)
    outputs["score_logit"] = torch.tensor([[math.log(confidence / (1 - confidence))]])
    outputs = {k: v.to(model.device) for k, v in outputs.items()}
    if "dims" in outputs:
        outputs["dims"] = outputs["dims"].clamp(min=1e-3)
    return outputs
