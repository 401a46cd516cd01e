"""A chat template read as literal text around each message, so conversations are tokenized without rendering them.

    layout = ChatLayout.probe(tokenizer)     # None: the template is not literal text around the contents
    layout.render(messages) == tokenizer.apply_chat_template(messages, tokenize=False)   # checked on probes

Why: rendering a Jinja template costs ~25 us per conversation and tokenizing the rendered text costs the Rust
tokenizer's offsets and Python's reading of them. Most templates (SmolLM2's ChatML among them) write, per message,
fixed text before and after its content, plus a fixed opening when the first message is not a system message. The
fixed text contains the template's special tokens, and a fast tokenizer splits its input at added tokens before
anything else, so the text between two of them is tokenized on its own: the conversation's tokens are those of
each message's segment (fixed text since the last special token + content + fixed text up to the next one), with
the fixed parts in between tokenized once. `segments()` gives those pieces.

A template is used this way only if probe conversations, with whitespace, newlines and empty contents, render
exactly as the layout says (a template that trims or rewrites contents, or merges messages, is not), and if every
piece of fixed text between two messages holds a special token. Callers still render one conversation per batch to
catch what probes cannot (tokenization.py), and send conversations whose contents hold '<' or a special token's
first character the rendering way: content-dependent template branches (reasoning tags) and added tokens that
straddle content and fixed text both need one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
MARK = "Zq9"  # probe content; no template writes it
PROBE_TEXTS = ("Hello there.", " lead space", "trail space ", "two\nlines\n", "", "ünï 中文 x")
PROBE_ROLES = (("user", "assistant"), ("user", "assistant", "user", "assistant"),
               ("system", "user", "assistant", "user", "assistant"), ("system", "user", "assistant"))


@dataclass(frozen=True)
class Literal:
    """Fixed text between two contents, cut at its first and last added token: `closes` joins the content before
    it, `middle` (added token through added token) is tokenized on its own, `opens` joins the content after it."""

    closes: str
    middle: str
    opens: str


@dataclass(frozen=True)
class ChatLayout:
    opening: str  # written before the first message when that is not a system message (SmolLM2: a system turn)
    before: dict[str, str]  # per role, written before its content
    after: dict[str, str]  # per role, written after its content
    added_tokens: tuple[str, ...]  # the tokenizer's added tokens, longest first (the order the tokenizer matches)

    @classmethod
    def probe(cls, tokenizer: PreTrainedTokenizerBase) -> ChatLayout | None:
        """The template's layout, or None where it is not literal text around contents or the tokenizer does not
        split its input at added tokens."""
        added = list(tokenizer.added_tokens_decoder.values())
        if (not tokenizer.is_fast or getattr(tokenizer, "split_special_tokens", False)
                or any(t.lstrip or t.rstrip or t.normalized for t in added)):
            return None
        try:
            layout = cls._read(tokenizer, tuple(sorted((t.content for t in added), key=len, reverse=True)))
        except Exception:  # a template that refuses a probe (alternation rules, a missing role): render it instead
            return None
        return layout if layout is not None and layout._holds(tokenizer) else None

    @classmethod
    def _read(cls, tokenizer, added_tokens: tuple[str, ...]) -> ChatLayout | None:
        def render(*messages):
            return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)

        first = render(("user", "Hi"))
        before, after = {}, {}
        for role in ("user", "assistant"):
            both = render(("user", "Hi"), (role, MARK))
            if not both.startswith(first) or both.count(MARK) != 1:
                return None
            before[role], after[role] = both[len(first):].split(MARK)
        alone = render(("system", MARK))
        if alone.count(MARK) != 1:
            return None
        before["system"], after["system"] = alone.split(MARK)
        own = before["user"] + "Hi" + after["user"]
        if not first.endswith(own):
            return None
        return cls(first[:len(first) - len(own)], before, after, added_tokens)

    def _holds(self, tokenizer) -> bool:
        """The probes render as the layout says; fixed text between messages holds an added token; an assistant
        turn's end-of-turn text is not all whitespace (its labelled span ends inside fixed text, not the content)."""
        for roles in PROBE_ROLES:
            for shift in range(len(PROBE_TEXTS)):
                messages = [{"role": r, "content": PROBE_TEXTS[(shift + i) % len(PROBE_TEXTS)]}
                            for i, r in enumerate(roles)]
                if tokenizer.apply_chat_template(messages, tokenize=False) != self.render(messages):
                    return False
        between = [self.after[a] + self.before[b] for a in ROLES for b in ROLES]
        return (all(self.split(text).middle for text in between)
                and self.after["assistant"].rstrip() != ""
                and self.labelled_chars >= len(self.split(self.after["assistant"]).closes))

    def render(self, messages: list[dict]) -> str:
        opening = self.opening if messages and messages[0]["role"] != "system" else ""
        return opening + "".join(self.before[m["role"]] + m["content"] + self.after[m["role"]] for m in messages)

    def literals(self, roles: list[str]) -> list[str]:
        """The fixed text before the first content, between each two, and after the last: len(roles) + 1."""
        opening = self.opening if roles[0] != "system" else ""
        return ([opening + self.before[roles[0]]]
                + [self.after[a] + self.before[b] for a, b in zip(roles[:-1], roles[1:], strict=True)]
                + [self.after[roles[-1]]])

    def split(self, text: str) -> Literal:
        matches = list(self._added_pattern.finditer(text))
        if not matches:
            return Literal(text, "", "")
        return Literal(text[:matches[0].start()], text[matches[0].start():matches[-1].end()], text[matches[-1].end():])

    @cached_property
    def labelled_chars(self) -> int:
        """How much of the fixed text after an assistant content its label span covers: the end-of-turn text,
        right-stripped (chat_format._assistant_spans: the reply through its end marker, not the newline after it)."""
        return len(self.after["assistant"].rstrip())

    def splits_content(self, text: str) -> bool:
        """Contents that go the rendering way: they could meet a template branch or an added token."""
        return self._risky.search(text) is not None

    @cached_property
    def _added_pattern(self) -> re.Pattern:
        return re.compile("|".join(map(re.escape, self.added_tokens))) if self.added_tokens else re.compile(r"(?!)")

    @cached_property
    def _risky(self) -> re.Pattern:
        return re.compile("[" + re.escape("".join({"<", *(token[0] for token in self.added_tokens if token)})) + "]")
