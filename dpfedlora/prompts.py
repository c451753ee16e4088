"""How a causal LM sees an example: prompt formats in a registry, and truncation that never
cuts the answer.

An example becomes ``before + content + after + answer + end`` token ids:

* ``plain``: the prompt text as is (with the tokenizer's own special prefix, e.g. BOS), the
  answer with its leading space, then EOS;
* ``chat``: the tokenizer's chat template with the prompt as the user's turn and the generation
  prompt after it (instruct models were tuned on this; a raw prompt is out of distribution),
  the answer as the assistant's reply, then EOS (``<|im_end|>`` for ChatML models);
* ``auto`` (``model.prompt_format``'s default): ``chat`` when the tokenizer has a chat template.

When an example does not fit ``model.max_length``, only the *content* loses tokens: with
``data.prompt_template`` (a string with ``{text}``) only the message text inside it is cut from
its end, so the instruction stays; without a template the prompt keeps its last tokens (where
the question usually is). The answer and the template's tokens are never cut; a length that
cannot hold them is a config error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, DataConfig, ModelConfig

__all__ = ["PromptFormat", "PROMPT_FORMATS", "register_prompt_format", "resolve_format", "Encoder"]

_MARK = "\u2063DPFEDLORA_CONTENT\u2063"  # invisible separator: never in real text


@dataclass(frozen=True)
class PromptFormat:
    name: str
    # tokenizer -> (text before the content, text after it)
    wrap: Callable[[Any], tuple[str, str]]
    # the answer's text as the format expects it (chat replies carry no leading space)
    answer: Callable[[str], str]
    special_prefix: bool  # the tokenizer's own special tokens (BOS) start the sequence


def _plain_wrap(tok) -> tuple[str, str]:
    return "", ""


def _chat_wrap(tok) -> tuple[str, str]:
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            "`model.prompt_format` = chat, but the model's tokenizer has no chat template. "
            "Use plain (or auto)."
        )
    text = tok.apply_chat_template(
        [{"role": "user", "content": _MARK}], add_generation_prompt=True, tokenize=False
    )
    before, after = text.split(_MARK)
    return before, after


PROMPT_FORMATS: dict[str, PromptFormat] = {}


def register_prompt_format(fmt: PromptFormat) -> PromptFormat:
    if fmt.name in PROMPT_FORMATS:
        raise ValueError(f"prompt format {fmt.name!r} is already registered.")
    PROMPT_FORMATS[fmt.name] = fmt
    return fmt


register_prompt_format(PromptFormat("plain", _plain_wrap, lambda a: a, special_prefix=True))
register_prompt_format(PromptFormat("chat", _chat_wrap, str.lstrip, special_prefix=False))


def resolve_format(name: str, tok) -> PromptFormat:
    """``auto`` is chat for tokenizers with a chat template (instruct models), else plain."""
    if name == "auto":
        name = "chat" if getattr(tok, "chat_template", None) else "plain"
    return PROMPT_FORMATS[name]


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


class Encoder:
    """Token ids of prompt + answer for one tokenizer, format and length."""

    def __init__(self, tok, data: DataConfig, model: ModelConfig) -> None:
        self.tok, self.max_length = tok, model.max_length
        self.format = resolve_format(model.prompt_format, tok)
        before, after = self.format.wrap(tok)
        prefix = tok("", add_special_tokens=True)["input_ids"] if self.format.special_prefix else []
        self.before = list(prefix) + _ids(tok, before)
        self.after = _ids(tok, after)
        self.end = [tok.eos_token_id] if tok.eos_token_id is not None else []
        self.template = data.prompt_template
        head, tail = self.template.split("{text}", 1) if self.template else ("", "")
        self.head, self.tail = _ids(tok, head), _ids(tok, tail)  # tokenised once, not per row

    def answer_ids(self, response: str) -> list[int]:
        return _ids(self.tok, self.format.answer(response))

    def encode(self, prompt: str, response: str, text: str | None = None) -> tuple[list, int]:
        """(ids, where the answer starts). ``text`` fills ``data.prompt_template``."""
        answer = self.answer_ids(response) + self.end
        fixed = len(self.before) + len(self.after) + len(answer)
        if self.template:
            head, tail = self.head, self.tail
            room = self.max_length - fixed - len(head) - len(tail)
            self._check_room(room, fixed + len(head) + len(tail))
            content = head + _ids(self.tok, text or "")[:room] + tail  # the text loses its end
        else:
            room = self.max_length - fixed
            self._check_room(room, fixed)
            content = _ids(self.tok, prompt)[-room:]  # the prompt keeps its end (the question)
        prompt_ids = self.before + content + self.after
        return prompt_ids + answer, len(prompt_ids)

    def _check_room(self, room: int, fixed: int) -> None:
        if room < 1:
            raise ConfigError(
                f"`model.max_length` = {self.max_length} cannot hold an example: the prompt "
                f"format ({self.format.name}), template and answer alone take {fixed} tokens. "
                f"Use at least {fixed + 16}."
            )

    def label_token_ids(self, names: tuple[str, ...]) -> list[int]:
        """First answer token per label word, checked distinct (the prediction ranks them)."""
        firsts = []
        for name in names:
            ids = self.answer_ids(f" {name}")
            if not ids:
                raise ConfigError(f"`data.label_names` has an empty label word {name!r}.")
            firsts.append(ids[0])
        if len(set(firsts)) < len(firsts):
            words = [self.tok.decode([i]) for i in firsts]
            raise ConfigError(
                f"`data.label_names` = {list(names)}: their answers start with the same token "
                f"({words}), so the first answer token cannot tell them apart. Use label words "
                "that start differently."
            )
        return firsts
