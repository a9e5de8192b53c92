"""Chat rows train on the model's own chat template, token for token, for the families this service targets
(Llama 3.1 Instruct, Gemma 2 it, Mistral Instruct v0.3, Phi-3, Qwen2.5: their real templates on a small tokenizer
that has their special tokens, tests/helpers/chat_templates) and for a base model without a template (ftaas'
plain one). Each test compares with transformers' own apply_chat_template(tokenize=True)."""

from __future__ import annotations

import pytest

from tests.helpers.chat_templates import FAMILIES, family_tokenizer
from worker.training.data import IGNORE, ChatTemplateError, Formatter

# The text each family's template writes for a trained assistant turn: the trained span, turn end included
# (Phi-3's writes <|endoftext|> after the conversation's last message)
PIECE = {
    "llama3": lambda content, last: content.strip() + "<|eot_id|>",
    "gemma2": lambda content, last: content.strip() + "<end_of_turn>\n",
    "mistral_v03": lambda content, last: " " + content.strip() + "</s>",
    "phi3": lambda content, last: content + "<|end|>\n" + ("<|endoftext|>" if last else ""),
    "qwen25": lambda content, last: content + "<|im_end|>\n",
    "plain": lambda content, last: content + "</s>",
}
WITH_TOOLS = ("llama3", "mistral_v03", "qwen25", "plain")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(params=(*FAMILIES, "plain"))
def family(request, tok):
    if request.param == "plain":
        tok.chat_template = None  # stories260k has none: ftaas' plain template is set on it
        yield "plain", tok
        tok.chat_template = None
    else:
        yield request.param, family_tokenizer(request.param)


def reference_ids(tok, fmt: Formatter, messages, tools=None, **kwargs) -> list[int]:
    out = tok.apply_chat_template(fmt.chat.template_messages(messages), tools=tools, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def trained_runs(ex) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_a_turn_is_trained_exactly_after_the_prompt_a_served_model_is_given(family):
    name, tok = family
    fmt = Formatter(tok, 512)
    messages = [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "How many heads of departments are older than 56?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM head WHERE age > 56"},
    ]
    if name == "gemma2":  # Gemma 2's template refuses a system message; its own error says so (below)
        messages = messages[1:]
    if name == "mistral_v03":
        # Mistral v0.3's writes the system prompt before the last user message only when that is the conversation's
        # last message: a served prompt has it, a training row ending with the answer does not. Token for token
        # the template's, so here without one (the spans test below keeps it)
        served = fmt.chat.render(messages[:-1], None, add_generation_prompt=True)
        assert "You write SQL." in served and "You write SQL." not in fmt.chat.render(messages, None)
        messages = messages[1:]
    ex = fmt.example({"messages": messages})
    assert ex.input_ids == reference_ids(tok, fmt, messages)
    prompt = reference_ids(tok, fmt, messages[:-1], add_generation_prompt=True)
    assert fmt.generation_row({"messages": messages}).prompt_ids == prompt
    first_trained = next(i for i, label in enumerate(ex.labels) if label != IGNORE)
    # the training row is the served prompt, then the answer: every answer token trained, no prompt token
    assert ex.input_ids[: len(prompt)] == prompt and first_trained == len(prompt), (
        name,
        fmt.chat.render(messages, None),
    )
    (run,) = trained_runs(ex)
    rendered = fmt.chat.render(messages, None)
    spans = fmt.chat._trained_spans(messages, None, rendered)
    assert [rendered[a:b] for a, b in spans] == [PIECE[name](messages[-1]["content"], True)]
    assert "SELECT" in tok.decode(run)
    if tok.bos_token_id is not None:  # one BOS at most, where the template writes it (Phi-3's writes none)
        assert ex.input_ids.count(tok.bos_token_id) <= 1 and prompt.count(tok.bos_token_id) <= 1


def test_weights_decide_which_turns_are_trained_in_a_multi_turn_chat(family):
    name, tok = family
    fmt = Formatter(tok, 512)
    system = [] if name == "gemma2" else [{"role": "system", "content": "You count."}]
    messages = [
        *system,
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": "five", "weight": 0},
        {"role": "user", "content": "are you sure?"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "and three plus three?"},
        {"role": "assistant", "content": "six", "weight": 1},
    ]
    ex = fmt.example({"messages": messages})
    assert ex.input_ids == reference_ids(tok, fmt, messages)
    rendered = fmt.chat.render(messages, None)
    spans = fmt.chat._trained_spans(messages, None, rendered)
    # (a span may start after the space before an answer, as Mistral's does here: the token holding it is trained)
    assert [rendered[a:b].lstrip(" ") for a, b in spans] == [
        PIECE[name]("four", False).lstrip(" "),
        PIECE[name]("six", True).lstrip(" "),
    ]
    assert len(trained_runs(ex)) == 2
    trained_text = tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE])
    assert "four" in trained_text and "six" in trained_text and "five" not in trained_text
    assert "sure" not in trained_text


@pytest.mark.parametrize("name", WITH_TOOLS)
def test_tool_calls_and_results_render_through_the_templates_own_tool_support(name, tok):
    if name == "plain":
        tok.chat_template = None
    else:
        tok = family_tokenizer(name)
    fmt = Formatter(tok, 1024)
    call = {"id": "call9abcd", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call9abcd"},
        {"role": "assistant", "content": "21 degrees."},
    ]
    try:
        ex = fmt.example({"messages": messages, "tools": [WEATHER]})
        assert ex.input_ids == reference_ids(tok, fmt, messages, tools=[WEATHER])
        rendered = fmt.chat.render(messages, [WEATHER])
        assert "get_weather" in rendered and "Paris" in rendered and "temp" in rendered
        runs = trained_runs(ex)
        assert len(runs) == 2  # the call and the answer
        assert "Paris" in tok.decode(runs[0]) and "21 degrees" in tok.decode(runs[1])
        assert "temp" not in tok.decode([t for r in runs for t in r])  # the tool's result is context
    finally:
        tok.chat_template = None


@pytest.mark.parametrize("name", ("phi3", "gemma2"))
def test_a_template_without_tool_support_names_the_field(name):
    fmt = Formatter(family_tokenizer(name), 512)
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [WEATHER]}
    with pytest.raises(ChatTemplateError) as info:
        fmt.example(row)
    assert info.value.field == "tools" and "no tool support" in info.value.message


def test_a_template_that_refuses_a_conversation_says_why():
    fmt = Formatter(family_tokenizer("gemma2"), 512)
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    with pytest.raises(ChatTemplateError) as info:
        fmt.example(row)
    assert "System role not supported" in info.value.message


def test_developer_is_system_where_the_template_has_no_developer_role():
    tok = family_tokenizer("qwen25")
    fmt = Formatter(tok, 512)
    as_developer = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    as_system = [{**as_developer[0], "role": "system"}, *as_developer[1:]]
    assert fmt.example({"messages": as_developer}).input_ids == reference_ids(tok, fmt, as_system)
    assert "<|im_start|>system\nBe brief." in fmt.chat.render(as_developer, None)


def test_a_long_row_loses_the_beginning_of_its_prompt_never_its_answer(tok):
    fmt = Formatter(tok, 48)
    answer = "SELECT name FROM head"
    long_prompt = "Tell me the names of every head of every department please. " * 6 + "\nA: "
    whole = Formatter(tok, 4096).example({"prompt": long_prompt, "completion": answer})
    ex = fmt.example({"prompt": long_prompt, "completion": answer})
    assert len(whole.input_ids) > 48 and len(ex.input_ids) == 48 and ex.cut
    assert ex.input_ids[0] == tok.bos_token_id  # the BOS stays
    assert ex.input_ids[1:] == whole.input_ids[-47:] and ex.labels[1:] == whole.labels[-47:]  # the end, whole
    assert ex.num_loss_tokens == whole.num_loss_tokens
    assert fmt.example({"prompt": "Q: ", "completion": answer * 10}) is None  # its answer alone is too long


@pytest.mark.parametrize("name", ("llama3", "qwen25"))
def test_a_conversation_that_opens_with_the_assistant_trains_its_answer_not_the_header(name):
    tok = family_tokenizer(name)
    fmt = Formatter(tok, 1024)
    messages = [
        {"role": "assistant", "content": "Welcome!"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    ex = fmt.example({"messages": messages})
    rendered = fmt.chat.render(messages, None)
    spans = fmt.chat._trained_spans(messages, None, rendered)
    assert [rendered[a:b] for a, b in spans] == [PIECE[name]("Welcome!", False), PIECE[name]("hello", True)]
    assert "system" not in tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE])
    assert fmt.generation_row({"messages": messages[:1]}) is None  # no prompt to generate an opening answer from


def test_a_user_message_that_repeats_the_answer_is_not_taken_for_it():
    """Mistral v0.3 moves the tools into the last user turn, so the turn is not where it is in a shorter render:
    it is found in place, not by searching for its text (which the user's message also holds)."""
    tok = family_tokenizer("mistral_v03")
    fmt = Formatter(tok, 2048)
    said = "Hello there, how are you doing today my friend"
    messages = [
        {"role": "user", "content": f"Repeat: {said}"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": said},
    ]
    ex = fmt.example({"messages": messages, "tools": [WEATHER]})
    assert ex.input_ids == reference_ids(tok, fmt, messages, tools=[WEATHER])
    rendered = fmt.chat.render(messages, [WEATHER])
    spans = fmt.chat._trained_spans(messages, [WEATHER], rendered)
    assert [rendered[a:b].lstrip(" ") for a, b in spans] == [said + "</s>", said + "</s>"]
    assert all(not rendered[a - 8 : a].endswith("Repeat: ") for a, _ in spans)


def test_a_prompt_already_rendered_by_the_template_gets_no_second_bos():
    tok = family_tokenizer("llama3")
    fmt = Formatter(tok, 512)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    held_out = fmt.generation_row({"messages": messages})  # what a comparison on held-out rows sends back as text
    again = fmt.generation_row({"prompt": held_out.prompt, "completion": ""})
    assert again.prompt_ids == held_out.prompt_ids and again.prompt_ids.count(tok.bos_token_id) == 1
