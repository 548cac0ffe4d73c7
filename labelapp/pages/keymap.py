"""The one keymap table. It drives both the page's key handlers (static/labelapp/app.js reads
it from a JSON script tag) and the `?` help overlay (rendered from it server-side).

Each entry: scope (a page name, "task" for every page that shows one item to label, or
"global"), the keys as the handler matches them (modifiers first, lower-case, `+`-joined:
"ctrl+enter"), what the help shows, the action the script performs, and whether it also fires
while typing in a text field (only keys that do not type: F1, Ctrl+…, Esc).

Ranking: every rank, flag and score key acts on the *current* response, which the page outlines,
badges "current" and names in a live status line. A key never moves the current response on by
itself: only J/K (or Tab, a click, a drag) do, so "3 then U" ranks and flags the same card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Binding:
    scope: str
    keys: tuple[str, ...]
    label: str
    action: str
    description: str
    in_text: bool = False


DIGITS = tuple(str(n) for n in range(1, 10))

TASK_PAGES = ("write", "rank", "compare", "review")

KEYMAP: tuple[Binding, ...] = (
    Binding("global", ("?",), "?", "help", "Show or hide this list of keys"),
    Binding("global", ("f1", "ctrl+/"), "F1 or Ctrl+/", "help", "Show or hide this list of keys, also while typing",
            in_text=True),
    Binding("global", ("escape",), "Esc", "escape", "Close this help, or leave the text field", in_text=True),
    Binding("task", ("g",), "G", "dialog:guidelines", "Show or hide the project's guidelines"),
    Binding("task", ("m",), "M", "click:toggle-raw", "Show the raw text instead of the rendered markdown, or back"),
    Binding("project", ("w",), "W", "click:start-write", "Start writing demonstrations"),
    Binding("project", ("r",), "R", "click:start-rank", "Start ranking responses"),
    Binding("project", ("v",), "V", "click:start-review", "Review demonstrations (reviewers)"),
    Binding("project", ("c",), "C", "click:start-compare", "Start comparing answers (blind evaluation)"),
    Binding("write", ("ctrl+enter", "meta+enter"), "Ctrl+Enter", "submit", "Submit the demonstration", in_text=True),
    Binding("write", ("s",), "S", "skip", "Skip this prompt (type a reason, then Enter)"),
    Binding("write", ("t",), "T", "focus:answer", "Go to the answer box"),
    Binding("rank", DIGITS, "1 … K", "rank",
            "Give the current response this rank (1 best; equal ranks tie); it stays current"),
    Binding("rank", ("0", "backspace", "delete"), "0 / Del", "unrank", "Clear the current response's rank"),
    Binding("rank", ("j", "arrowdown"), "J / ↓", "next", "Make the next response current (stops at the last)"),
    Binding("rank", ("k", "arrowup"), "K / ↑", "prev", "Make the previous response current (stops at the first)"),
    Binding("rank", ("h",), "H", "flag:harmful", "Flag the current response as harmful (again: unflag)"),
    Binding("rank", ("u",), "U", "flag:untruthful", "Flag the current response as untruthful (again: unflag)"),
    Binding("rank", ("i",), "I", "flag:ignores_instruction", "Flag the current response: ignores the instruction"),
    Binding("rank", ("q",), "Q", "score", "Go to the current response's 1–7 score (Esc comes back)"),
    Binding("rank", ("n",), "N", "toggle:none_acceptable", "None of the responses is acceptable"),
    Binding("rank", ("l",), "L", "click:toggle-layout", "Show the responses side by side, or stacked"),
    Binding("rank", ("ctrl+enter", "meta+enter"), "Ctrl+Enter", "submit", "Submit the ranking", in_text=True),
    Binding("rank", ("s",), "S", "skip", "Skip this task (optional reason, then Enter)"),
    Binding("compare", ("1", "arrowleft"), "1 / ←", "click:prefer-left", "The left answer is better"),
    Binding("compare", ("2", "arrowright"), "2 / →", "click:prefer-right", "The right answer is better"),
    Binding("compare", ("t", "0"), "T / 0", "click:prefer-tie", "They are equally good (tie)"),
    Binding("compare", ("s",), "S", "skip", "Skip this comparison (optional reason, then Enter)"),
    Binding("review", ("a",), "A", "click:approve", "Approve the demonstration"),
    Binding("review", ("r",), "R", "click:reject", "Reject it (needs a comment)"),
    Binding("review", ("c",), "C", "focus:comment", "Go to the comment box"),
    Binding("studio", ("n",), "N", "focus:round-method", "Start a new round: go to its form"),
    Binding("studio", ("g",), "G", "focus:runs-title", "Go to the runs table"),
    Binding("studio", ("m",), "M", "focus:models-title", "Go to the model versions"),
    Binding("studio-run", ("u",), "U", "click:studio-up", "Back to the studio overview"),
    Binding("studio-run", ("c",), "C", "focus:charts-title", "Go to the charts (←/→ move along a focused chart)"),
)


def bindings_for(page: str) -> list[dict]:
    scopes = {"global", page} | ({"task"} if page in TASK_PAGES else set())
    return [asdict(b) for b in KEYMAP if b.scope in scopes]
