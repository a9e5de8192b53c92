"""Chat rows -> token ids and labels through the model's own chat template, token for token.

The ids of a conversation are exactly `tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)`:
the template's text, tokenized once without added special tokens (what transformers does), so the model trains
on the layout it will be served with: one BOS where the template writes it, the template's own turn ends, no
EOS appended after them.

The labels are the assistant turns that are trained (weight 0 keeps a turn as context):
- a template with `{% generation %}` markers names them itself (transformers tracks the spans);
- otherwise each turn is what the template writes for it after the generation prompt ("SELECT ...<|eot_id|>",
  its turn end included), found in place in the whole conversation by rendering it again with a stand-in for
  that turn, never searched for: templates that move text around (Mistral's writes the system prompt into the
  last user turn) and users who repeat the answer are handled alike (ChatRenderer._locate_turn).
A token is trained when it overlaps a trained span, the rule of transformers' own assistant mask.

A tokenizer without a chat template (a base model) gets ftaas' plain one (FALLBACK_CHAT_TEMPLATE), set on the
tokenizer so that it is saved with the adapter: whoever serves the model renders chats the way it was trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import jinja2

# Readable role headers for base models; tools as JSON, tool calls as JSON in the assistant's turn. The
# generation markers make each assistant turn (its text, calls and EOS) the trained span.
FALLBACK_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}{{- '### Tools:\\n' + (tools | tojson) + '\\n\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '### Assistant:\\n' }}"
    "{%- generation %}"
    "{{- message['content'] if message['content'] is string else '' }}"
    "{%- if message['tool_calls'] %}"
    "{{- '<tool_calls>' + (message['tool_calls'] | tojson) + '</tool_calls>' }}"
    "{%- endif %}"
    "{{- eos_token }}"
    "{%- endgeneration %}"
    "{{- '\\n\\n' }}"
    "{%- else %}"
    "{{- '### ' + message['role'] | capitalize + ':\\n' + message['content'] + '\\n\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Assistant:\\n' }}{%- endif %}"
)
_STAND_IN = "\ue000"  # a private-use character: no answer begins with it
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(ValueError):
    """A row the model's chat template cannot render as asked; `field` names the part of the row at fault."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message
        self.row: int | None = None  # the position of the row in a batch (Formatter.examples)
        self.line: int | None = None  # the row's line in its file (tokenized.tokenize_rows)


@dataclass
class Rendered:
    text: str
    ids: list[int]
    labels: list[int]  # the id where trained, IGNORE elsewhere


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


class ChatRenderer:
    """One tokenizer's chat template, with what it supports found once from its source."""

    def __init__(self, tokenizer, ignore_index: int) -> None:
        ensure_chat_template(tokenizer)
        self.tok = tokenizer
        self.ignore = ignore_index
        source = tokenizer.get_chat_template()
        self.has_generation = bool(_GENERATION_MARKER.search(source))
        # Read from the template's source: a template that never names `tools` ignores them (Phi-3's, Gemma's),
        # and one that never names `developer` has no such role
        self.has_tools = bool(re.search(r"\btools\b", source))
        self.has_developer = "developer" in source

    # -- rendering

    def template_messages(self, messages: list[dict]) -> list[dict]:
        """The messages as the template takes them: no ftaas-only keys; `developer` as `system` where the template
        has no developer role (OpenAI's newer name for the same thing)."""
        out = []
        for m in messages:
            m = {k: v for k, v in m.items() if k != "weight"}
            if m["role"] == "developer" and not self.has_developer:
                m["role"] = "system"
            out.append(m)
        return out

    def render(self, messages: list[dict], tools: list[dict] | None, *, add_generation_prompt: bool = False) -> str:
        try:
            return self.tok.apply_chat_template(
                self.template_messages(messages),
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as exc:  # raise_exception() in a template: "System role not supported", ...
            raise ChatTemplateError("messages", f"the model's chat template refuses this conversation: {exc}") from None

    def encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        out = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return out["input_ids"], out["offset_mapping"]

    # -- a training conversation

    def conversation(self, messages: list[dict], tools: list[dict] | None = None) -> Rendered:
        self._check_tools(messages, tools)
        text = self.render(messages, tools)
        ids, offsets = self.encode_text(text)
        spans = self._trained_spans(messages, tools, text, offsets)
        labels = [self.ignore] * len(ids)
        span = 0
        for i, (start, end) in enumerate(offsets):  # both in order: one pass, as transformers' assistant mask
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            if span == len(spans):
                break
            if end > spans[span][0]:
                labels[i] = ids[i]
        return Rendered(text, ids, labels)

    def _trained_spans(
        self, messages: list[dict], tools: list[dict] | None, text: str, offsets: list[tuple[int, int]] | None = None
    ) -> list[tuple[int, int]]:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        trained = [m.get("weight", 1) != 0 for m in (messages[i] for i in turns)]
        if self.has_generation:
            spans = self._generation_spans(messages, tools)
            if len(spans) == len(turns):
                return [s for s, keep in zip(spans, trained, strict=True) if keep]
        return [
            self._locate_turn(messages, i, tools, text, offsets) for i, keep in zip(turns, trained, strict=True) if keep
        ]

    def _locate_turn(
        self, messages: list[dict], i: int, tools: list[dict] | None, text: str, offsets: list[tuple[int, int]] | None
    ) -> tuple[int, int]:
        """The span of trained assistant turn i in `text`, the whole conversation rendered, found in place.

        The turn as the template writes it when it ends the conversation: after the generation prompt (the
        conversation up to it rendered with one, when that is how it begins), to the end, the template's turn end
        included ("SELECT ...<|eot_id|>"). Where it lies in `text`: where `text` parts from the same conversation
        with a stand-in of the turn (its text and its calls' arguments replaced by a private-use character), less
        the turn's fixed opening before that point ('[TOOL_CALLS] [{"name": ...'). Both are whole conversations,
        so whatever the template does around the turn (Mistral v0.3 writes the system prompt and the tools into
        the last user turn, and drops the system prompt when an answer ends the conversation) is the same on both
        sides, and nothing is searched for: a user message that repeats the answer is not taken for it. The span
        runs as far as `text` agrees with the turn (Phi-3 writes <|endoftext|> after the last message only), cut
        back to a token boundary."""
        stand_in = _stand_in(messages[i])
        through = self.render(messages[: i + 1], tools)
        first_change = _shared_prefix(through, self.render([*messages[:i], stand_in], tools))
        before = self.render(messages[:i], tools, add_generation_prompt=True) if i else None
        turn_start = len(before) if before is not None and through.startswith(before) else first_change
        turn_start = min(turn_start, first_change)
        opening = through[turn_start:first_change]
        start = _shared_prefix(text, self.render([*messages[:i], stand_in, *messages[i + 1 :]], tools)) - len(opening)
        if start < 0 or text[start : start + len(opening)] != opening:
            raise ChatTemplateError(f"messages[{i}]", "the chat template renders this assistant turn differently here")
        piece = through[turn_start:]
        length = _shared_prefix(piece, text[start : start + len(piece)])
        if 0 < length < len(piece):  # they part inside a token ("<|" of <|endoftext|> and <|user|>): not trained
            length = _token_start(offsets or self.encode_text(text)[1], start + length) - start
        if length <= 0:
            raise ChatTemplateError(
                f"messages[{i}]", "the chat template leaves this assistant turn out of the conversation"
            )
        return start, start + length

    def _generation_spans(self, messages: list[dict], tools: list[dict] | None) -> list[tuple[int, int]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        _, indices = render_jinja_template(
            conversations=[self.template_messages(messages)],
            tools=tools,
            chat_template=self.tok.get_chat_template(None, tools),
            return_assistant_tokens_mask=True,
            **self.tok.special_tokens_map,
        )
        return [tuple(span) for span in indices[0]]

    def _check_tools(self, messages: list[dict], tools: list[dict] | None) -> None:
        if self.has_tools:
            return
        if tools:
            raise ChatTemplateError("tools", "the model's chat template has no tool support")
        for i, m in enumerate(messages):
            if m.get("tool_calls"):
                raise ChatTemplateError(f"messages[{i}].tool_calls", "the model's chat template has no tool support")
            if m["role"] == "tool":
                raise ChatTemplateError(f"messages[{i}].role", "the model's chat template has no tool support")

    # -- a generation prompt

    def prompt(self, context: list[dict], tools: list[dict] | None = None) -> tuple[str, list[int]]:
        """The text and ids a served model is given to answer `context`: the template with its generation prompt."""
        self._check_tools(context, tools)
        text = self.render(context, tools, add_generation_prompt=True)
        return text, self.encode_text(text)[0]


def _stand_in(message: dict) -> dict:
    """The assistant message with its text and its calls' arguments replaced: rendered, it parts from the real one
    where the answer's own content begins, whatever the template writes around it."""
    out = {**message, "content": _STAND_IN}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": {_STAND_IN: _STAND_IN}}}
            for call in message["tool_calls"]
        ]
    return out


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _token_start(offsets: list[tuple[int, int]], char: int) -> int:
    """The start of the token that holds character `char` (or `char` itself between tokens)."""
    for start, end in offsets:
        if start <= char < end:
            return start
    return char


def reference_of(message: dict) -> str:
    """What an assistant turn says, to score generations against: its text, or its tool calls as JSON."""
    if message.get("content"):
        return message["content"]
    calls = [c["function"] for c in message.get("tool_calls", [])]
    return json.dumps(calls, ensure_ascii=False) if calls else ""
