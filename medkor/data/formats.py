"""Record formats: a checked JSON record -> token ids and which of them are not learned.

Every format turns a record into an *example*: ids the model reads, and an
`ignored` flag per id (prompt and template tokens, never a target). The first id
of every example is never a target either (nothing before it predicts it).

- `text`: `<bos> text <eos>`, every token learned (continued pretraining).
- `dictionary`: `<bos> template(term, definition) <eos>`; loss on everything, or
  (`loss_on: completion`) only from the definition on.
- `chat`: `prompt`/`completion` or a `messages` list, rendered by the tokenizer's
  chat template; only the assistant turns (and the template's end-of-turn after
  them) are learned.
- `mcq`: a KorMedMCQA-schema record as exactly the prompt the evaluation builds
  (`medkor.eval.prompts`, `harness` or `chat`), then the answer letter as the token
  the evaluation scores (optionally the record's `cot` before it).

Prompt and completion are tokenized separately and concatenated, as at inference
(the prompt alone is tokenized, then the model continues): the prompt ids are then
exactly those the evaluation feeds, and no token straddles the boundary. Whitespace
that ends a prompt moves to the completion (` A`, not `▁` + `A`), as the
evaluation's letter spellings do.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np

from medkor.eval.encoding import encode_questions
from medkor.eval.prompts import (
    ANSWER_CUE, PROMPT_STYLES, PromptStyle, answer_spellings, build_prompt, harness_prompt, question_text,
)
from medkor.eval.questions import LETTERS, Question, QuestionError, parse_record

FORMATS: tuple[str, ...] = ("text", "dictionary", "chat", "mcq")
FORMAT_VERSION = 1  # bump when a rendering below changes: it is part of every cache key
DEFAULT_TEMPLATE = "용어: {term}\n설명: {definition}"
LossOn = Literal["all", "completion"]
Item = Union[str, tuple, Question]  # what a checked record becomes, per format
_PROBE = Question("doctor", 0, " 질문 ", ("가", "나", "다", "라", "마"), "A")


@dataclass(frozen=True)
class FormatSpec:
    """How records of one source are read and rendered (all of it goes into the cache key).

    Attributes:
        format: `text`, `dictionary`, `chat` or `mcq`.
        text_field: `text`: field holding the document.
        term_field: `dictionary`: field holding the term.
        definition_field: `dictionary`: field holding the definition.
        template: `dictionary`: Python format string with `{term}` and `{definition}`
            (default `용어: {term}\\n설명: {definition}`).
        loss_on: `dictionary`: `all` (every token) or `completion` (from the definition on).
        prompt_field: `chat`: field of the user prompt (with `completion_field`).
        completion_field: `chat`: field of the answer that is learned.
        messages_field: `chat`: field of a list of `{role, content}` turns (used when a
            record has no `prompt_field`); every `assistant` turn is learned.
        prompt_style: `mcq`: `harness` or `chat`, as in `KorMedMCQAEval(prompt=...)`.
        cot: `mcq`: put the record's `cot` text before the answer letter when it has one.
    """

    format: str = "text"
    text_field: str = "text"
    term_field: str = "term"
    definition_field: str = "definition"
    template: str = DEFAULT_TEMPLATE
    loss_on: LossOn = "all"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    prompt_style: PromptStyle = "harness"
    cot: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not supported; choose one of {', '.join(FORMATS)}")
        if self.loss_on not in ("all", "completion"):
            raise ValueError(f"loss_on must be 'all' or 'completion', got {self.loss_on!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt_style!r}")
        if self.format == "dictionary":
            names = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
            if names != {"term", "definition"}:
                raise ValueError(
                    f"template {self.template!r} must use exactly the fields {{term}} and {{definition}} "
                    f"(it uses {sorted(names) or 'none'}); write e.g. {DEFAULT_TEMPLATE!r}"
                )

    @property
    def examples(self) -> bool:
        """Whole examples (packed without cutting) rather than a stream of text."""
        return self.format != "text"

    def key(self) -> dict[str, Any]:
        """The options that change the rows: only those the format reads."""
        used = {
            "text": ("text_field",),
            "dictionary": ("term_field", "definition_field", "template", "loss_on"),
            "chat": ("prompt_field", "completion_field", "messages_field"),
            "mcq": ("prompt_style", "cot"),
        }[self.format]
        values = asdict(self)
        key = {"format": self.format, "format_version": FORMAT_VERSION, **{name: values[name] for name in used}}
        if self.format == "mcq":  # the evaluation's prompt text is the rows' text: follow any change to it
            key["prompt_probe"] = harness_prompt(_PROBE) + "|" + "|".join(answer_spellings(self.prompt_style))
        return key


def _text(record: dict, field: str, what: str) -> tuple[Optional[str], Optional[str]]:
    if field not in record:
        keys = ", ".join(sorted(record)[:8])
        return None, f"missing field {field!r} (fields: {keys}); set {what} to the right one"
    value = record[field]
    if not isinstance(value, str):
        return None, f"field {field!r} is {type(value).__name__}, not a string"
    if not value.strip():
        return None, f"field {field!r} is empty"
    return value, None


def _messages(record: dict, spec: FormatSpec) -> tuple[Optional[tuple], Optional[str]]:
    if spec.prompt_field in record:
        prompt, problem = _text(record, spec.prompt_field, "prompt_field")
        if problem:
            return None, problem
        completion, problem = _text(record, spec.completion_field, "completion_field")
        if problem:
            return None, problem
        return (("user", prompt), ("assistant", completion)), None
    if spec.messages_field not in record:
        keys = ", ".join(sorted(record)[:8])
        return None, (
            f"neither {spec.prompt_field!r} nor {spec.messages_field!r} (fields: {keys}); "
            "set prompt_field/completion_field or messages_field"
        )
    turns = record[spec.messages_field]
    if not isinstance(turns, list) or not turns:
        return None, f"field {spec.messages_field!r} must be a non-empty list of {{role, content}} objects"
    out = []
    for number, turn in enumerate(turns):
        where = f"{spec.messages_field}[{number}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            return None, f"{where} must be an object with string 'role' and 'content'"
        if turn["role"] not in ("system", "user", "assistant"):
            return None, f"{where}.role is {turn['role']!r}; use system, user or assistant"
        if not turn["content"].strip():
            return None, f"{where}.content is empty"
        out.append((turn["role"], turn["content"]))
    if not any(role == "assistant" for role, _ in out):
        return None, f"field {spec.messages_field!r} has no assistant turn, so nothing would be learned"
    return tuple(out), None


def check_record(record: Any, spec: FormatSpec, where: str) -> tuple[Optional[Item], Optional[str]]:
    """(item, None) for a usable record of `spec.format`, (None, problem naming the field) otherwise."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if spec.format == "text":
        return _text(record, spec.text_field, "text_field")
    if spec.format == "dictionary":
        term, problem = _text(record, spec.term_field, "term_field")
        if problem:
            return None, problem
        definition, problem = _text(record, spec.definition_field, "definition_field")
        return (None, problem) if problem else ((term, definition), None)
    if spec.format == "chat":
        return _messages(record, spec)
    try:
        question = parse_record(record, record.get("subject", "") if isinstance(record.get("subject"), str) else "", 0, where)
    except QuestionError as error:
        return None, str(error).removeprefix(f"{where}: ")
    return question, None


def item_text(item: Item) -> str:
    """All the text of an item in one string: what the split hash and the leak check read."""
    if isinstance(item, str):
        return item
    if isinstance(item, Question):
        return "\n".join([item.question, *item.options, item.cot])
    if item and isinstance(item[0], tuple):  # chat turns
        return "\n".join(content for _, content in item)
    return "\n".join(item)


def item_key(item: Item) -> str:
    """A canonical string of an item (which side of a carved validation split it falls on)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Question):
        return json.dumps([item.question, list(item.options), item.answer, item.cot], ensure_ascii=False)
    return json.dumps(item, ensure_ascii=False)


def _split_prompt(prompt: str, completion: str) -> tuple[str, str]:
    """Move whitespace that ends the prompt to the start of the completion."""
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped):] + completion


def _chat_turns(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def render_chat(messages: Sequence[tuple[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, learned) pieces: each assistant turn is learned.

    The template is rendered up to each assistant turn with the generation prompt,
    and with that turn; the difference is the turn as the template writes it
    (content, end-of-turn). A template that does not render a conversation as a
    prefix of its continuation cannot be trained on this way: an error says so.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("format 'chat' (and mcq with prompt_style 'chat') needs a tokenizer with a chat template")
    pieces: list[tuple[str, bool]] = []
    done = ""
    turns = _chat_turns(messages)
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before = tokenizer.apply_chat_template(turns[:index], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(turns[: index + 1], tokenize=False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError(
                "the tokenizer's chat template does not render a conversation as a prefix of its continuation; "
                "the learned turns cannot be told apart (use a prefix-stable template)"
            )
        pieces.append((before[len(done):], False))
        pieces.append((after[len(before):], True))
        done = after
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    if len(full) > len(done):
        pieces.append((full[len(done):], False))  # turns after the last assistant one: read, not learned
    return [(text, learned) for text, learned in pieces if text]


class ExampleEncoder:
    """Items of one format -> (flat int32 ids, lengths, flat bool `ignored`) of whole examples.

    Args:
        spec: the format.
        tokenizer: the Hugging Face tokenizer (chat template, and the evaluation's own encoding for `mcq`).
        backend: a `tokenizers.Tokenizer` without truncation or padding (everything else).
        bos: BOS id (`text` and `dictionary` frame examples with it and `eos`).
        eos: EOS id.
    """

    def __init__(self, spec: FormatSpec, tokenizer: Any, backend: Any, bos: int, eos: int) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.backend = backend
        self.bos = bos
        self.eos = eos

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def pieces(self, item: Item) -> list[tuple[str, bool]]:
        """`dictionary` and `chat` items as (text, learned) pieces, in order."""
        spec = self.spec
        if spec.format == "dictionary":
            term, definition = item  # type: ignore[misc]
            head, tail = spec.template.split("{definition}", 1)
            if spec.loss_on == "all":
                return [(spec.template.format(term=term, definition=definition), True)]
            prompt, completion = _split_prompt(head.format(term=term), definition + tail.format(term=term))
            return [(prompt, False), (completion, True)]
        return render_chat(item, self.tokenizer)  # type: ignore[arg-type]

    def encode(self, items: Sequence[Item]) -> tuple[list[list[int]], list[list[bool]]]:
        """Ids and ignored flags of every item (lists: the caller flattens)."""
        if self.spec.format == "mcq":
            return self._encode_mcq(items)  # type: ignore[arg-type]
        framed = self.spec.format == "dictionary"
        all_pieces = [self.pieces(item) for item in items]
        flat = self._ids([text for pieces in all_pieces for text, _ in pieces])
        ids_out, ignored_out, at = [], [], 0
        for pieces in all_pieces:
            ids: list[int] = [self.bos] if framed else []
            ignored: list[bool] = [True] if framed else []
            for _, learned in pieces:
                ids += flat[at]
                ignored += [not learned] * len(flat[at])
                at += 1
            if framed:
                ids.append(self.eos)
                ignored.append(False)
            ids_out.append(ids)
            ignored_out.append(ignored)
        return ids_out, ignored_out

    def _encode_mcq(self, questions: Sequence[Question]) -> tuple[list[list[int]], list[list[bool]]]:
        style = self.spec.prompt_style
        encoded = encode_questions(list(questions), self.tokenizer, style)
        ids_out, ignored_out = [], []
        for item in encoded:
            question, letter = item.question, item.question.answer
            letter_id = item.letter_ids[LETTERS.index(letter)]
            answer = item.spelling.format(letter)  # how the evaluation writes the letter after the prompt
            reasoning = self.spec.cot and question.cot.strip()
            if style == "harness":
                if reasoning:
                    completion = self._ids([f" {question.cot.strip()}\n{ANSWER_CUE}{answer}"])[0]
                else:
                    completion = [letter_id]
                completion = completion + [self.eos]
            else:
                reply = f"{question.cot.strip()}\n{ANSWER_CUE} {letter}" if reasoning else letter
                rest = self._rendered_reply(question, reply)[len(item.prompt):]
                if reasoning:
                    completion = self._ids([rest])[0]
                else:  # the letter as the very token the evaluation scores, then the template's end of turn
                    if not rest.startswith(letter):
                        raise ValueError("the chat template does not write the answer turn's text as given")
                    tail = rest[len(letter):]
                    completion = [letter_id] + (self._ids([tail])[0] if tail else [])
            ids_out.append(list(item.prompt_ids) + completion)
            ignored_out.append([True] * len(item.prompt_ids) + [False] * len(completion))
        return ids_out, ignored_out

    def _rendered_reply(self, question: Question, reply: str) -> str:
        """The chat prompt of the evaluation followed by the reply as an assistant turn."""
        prompt = build_prompt(question, "chat", self.tokenizer)
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question_text(question)}, {"role": "assistant", "content": reply}],
            tokenize=False,
        )
        if not full.startswith(prompt):
            raise ValueError(
                "the tokenizer's chat template does not render the answer turn after the evaluation's prompt; "
                "use prompt_style 'harness'"
            )
        return full


def flatten(ids: list[list[int]], ignored: list[list[bool]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example lists -> (flat int32 ids, int64 lengths, flat bool ignored)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    values = np.fromiter((t for e in ids for t in e), dtype=np.int32, count=total)
    mask = np.fromiter((f for e in ignored for f in e), dtype=bool, count=total)
    return values, lengths, mask
