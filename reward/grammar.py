"""The episode's tag grammar, think -> (search -> information -> think)* -> answer, as a state machine that both
format checks walk: ours (`reward.scoring.check_format`) and the reference's (`reward.reference`). They differ in
what text they check and how, not in which tag sequences are well-formed.

A state is either inside a block (any text allowed until its closing tag) or between blocks (only whitespace
allowed); `DONE` follows the answer's closing tag.
"""

from __future__ import annotations

DONE = "done"
TRANSITIONS: dict[str, dict[str, str]] = {
    "start": {"<think>": "in_think"},
    "in_think": {"</think>": "after_think"},
    "after_think": {"<search>": "in_search", "<answer>": "in_answer"},
    "in_search": {"</search>": "after_search"},
    "after_search": {"<information>": "in_information"},
    "in_information": {"</information>": "after_information"},
    "after_information": {"<think>": "in_think"},
    "in_answer": {"</answer>": DONE},
    DONE: {},
}
# The states inside a block, and the tag that opened it.
IN_BLOCK = {"in_think": "<think>", "in_search": "<search>", "in_information": "<information>", "in_answer": "<answer>"}
