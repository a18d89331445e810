"""One RLM of the call tree: its sandbox, its turn loop, and the child RLMs its code starts.

Each turn: ask the node's root model, run the reply's ```repl blocks in order in the sandbox, feed back their
(truncated) outputs. A final answer (``FINAL``/``FINAL_VAR`` in code or in the reply's prose) ends the node;
so do the ledger's limits (status ``budget_exhausted``, with the best partial answer) and errors (``error``).
A child's outcome goes back to its parent's code as a string.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import structlog
from pydantic import BaseModel
from structlog.contextvars import bound_contextvars

from rlmbox._exceptions import (
    BudgetExceeded,
    KernelDiedError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMReplyError,
    RLMBoxError,
)
from rlmbox.ledger import Charge, Ledger
from rlmbox.llm import window_chars
from rlmbox.parsing import (
    TextFinal,
    extract_code_blocks,
    find_code_final,
    find_text_final,
    looks_like_code,
    strip_code_blocks,
    truncate_middle,
)
from rlmbox.prompts import (
    Recursion,
    blind_sub_call_note,
    chunk_chars,
    compacted_message,
    compaction_request,
    describe_cell,
    first_user_message,
    kernel_restarted_message,
    last_chance_message,
    no_code_reminder,
    repeated_reply_note,
    system_prompt,
    turn_feedback,
)
from rlmbox.protocol import ChildQuery, QueryOutcome
from rlmbox.sandbox.base import ContextInput, SandboxBackend
from rlmbox.subcalls import SubCallRouter
from rlmbox.trajectory import NodeLog, text_digest
from rlmbox.tree import CallTree, NodeStatus, NodeSummary

__all__ = ["Node", "NodeOutcome", "context_digest"]

log = structlog.get_logger(__name__)

# A node cancelled this close to the tree's deadline was cancelled by a parent whose time was up.
TIME_UP_S = 0.05
# The same reply this many times in a row ends the node: it will not change, and each one spends a turn.
STUCK_REPLIES = 3
# A reply the node already had is asked for once more, sampled from the model's own distribution (at
# temperature 0 a model that repeats itself will do so again); the turn number is the seed, so that a recorded
# run replays. Asked again so, Qwen2.5-Coder 1.5B's repeated reply changed 9 times in 16; at 0.7, 5 in 16.
RESAMPLE_TEMPERATURE = 1.0
# The root conversation is compacted once it would fill this share of the root model's window; the last
# reply and its feedback are kept as they are.
COMPACT_AT = 0.75
KEEP_RECENT = 2
# The output a turn shows the model is at most this share of its window (a long cell output would otherwise
# fill a small model's window in one turn; text full of digits has fewer characters per token than prose).
OUTPUT_SHARE = 1 / 8
# Times a root call is tried again, compacted or cut, after the provider refused it as over the window.
FIT_ATTEMPTS = 2
# llm_query prompts all shorter than this, over a context much longer, cannot have carried the context: the
# model is told the sub-model sees only its prompt (small models ask it about `context` without it).
BLIND_PROMPT_CHARS = 400


class NodeOutcome(BaseModel):
    status: NodeStatus
    answer: str | None = None
    error: str | None = None
    error_type: str | None = None
    budget_limit: str | None = None

    def for_parent(self, node_id: str) -> QueryOutcome:
        """What the parent's code gets from ``rlm_query``: the answer, or why there is none."""
        if self.status == "completed":
            return QueryOutcome(ok=True, text=self.answer or "")
        error = f"the child RLM {node_id} stopped ({self.status}: {self.error})"
        if self.answer:
            error += f"; its partial answer: {self.answer}"
        return QueryOutcome(ok=False, error=error)


class Node:
    """One RLM: ``query`` over ``context``, driven by ``model``, spending from ``ledger``."""

    def __init__(
        self,
        tree: CallTree,
        *,
        node_id: str,
        parent_id: str | None,
        query: str,
        context: ContextInput,
        model: str,
        ledger: Ledger,
    ) -> None:
        self.tree = tree
        self.id = node_id
        self.parent_id = parent_id
        self.depth = ledger.depth
        self.query = query
        self.context = context
        self.model = model
        self.ledger = ledger
        self.log: NodeLog = tree.trajectory.for_node(node_id)
        self._child_numbers = itertools.count(1)
        self._deadline: asyncio.Timeout | None = None
        self._stopped: BudgetExceeded | None = None
        self._turns: _Turns | None = None
        self._misbehaviour: dict[str, int] = {}

    def stop(self, reason: BudgetExceeded) -> None:
        """End this node's turns now (the tree's budget is spent); it reports ``budget_exhausted``."""
        self._stopped = reason
        if self._deadline is not None and not self._deadline.expired():
            self._deadline.reschedule(asyncio.get_running_loop().time())

    async def run(self, **origin: Any) -> NodeOutcome:
        """Run to an outcome. Raises for what the caller must see: a sandbox that would not start (the
        root's caller reports it), a cancellation (recorded as such)."""
        self.log.write(
            "node_started",
            parent=self.parent_id,
            depth=self.depth,
            model=self.model,
            query=text_digest(self.query),
            context=context_digest(self.context),
            limits=self.ledger.limits.model_dump(mode="json"),
            **origin,
        )
        started = time.monotonic()
        outcome: NodeOutcome | None = None
        try:
            with bound_contextvars(node=self.id):
                async with self.tree.slots.hold(self.depth):
                    outcome = await self._run()
            return outcome
        except asyncio.CancelledError:
            # Cancelled by a parent that the tree's budget stopped too: still a budget stop, not a cancel.
            remaining = self.ledger.remaining_s()
            out_of_time = remaining is not None and remaining < TIME_UP_S
            stopped = self._stopped or self.tree.stopped or (self._wall_time_spent() if out_of_time else None)
            outcome = (
                self._stopped_by(stopped) if stopped else NodeOutcome(status="cancelled", error="cancelled")
            )
            raise
        except RLMBoxError as exc:
            outcome = _failure(exc)
            raise
        finally:
            self._record(outcome or NodeOutcome(status="error", error="internal error"), started)

    def _record(self, outcome: NodeOutcome, started: float) -> None:
        summary = NodeSummary(
            id=self.id,
            parent=self.parent_id,
            depth=self.depth,
            model=self.model,
            status=outcome.status,
            iterations=self.ledger.iterations,
            sub_calls=self.ledger.sub_calls,
            tokens=self.ledger.tokens,
            elapsed_s=round(time.monotonic() - started, 3),
            error=outcome.error,
            budget_limit=outcome.budget_limit,
            misbehaviour=self._misbehaviour,
        )
        self.tree.nodes.append(summary)
        self.log.write(
            "node_finished",
            **summary.model_dump(exclude={"id", "parent", "depth", "model"}),
            answer=None if outcome.answer is None else text_digest(outcome.answer),
        )

    async def _run(self) -> NodeOutcome:
        tree, ledger = self.tree, self.ledger
        llm = tree.settings.llm
        limits = tree.settings.limits
        sub_model = llm.effective_sub_model
        assert sub_model is not None
        router = SubCallRouter(
            tree.lm,
            ledger,
            self.log,
            default_model=sub_model,
            allowed_models={m for m in (llm.model, sub_model) if m},
            model_calls=tree.model_calls,
            max_prompt_chars=tree.settings.sandbox.max_prompt_chars,
            spawn=self._child if self.depth < limits.max_depth else None,
        )
        root_chars, sub_chars = window_chars(llm, self.model), window_chars(llm, sub_model)
        shown = output_chars(root_chars, limits.max_output_chars)
        messages = [
            {
                "role": "system",
                "content": system_prompt(
                    self.context,
                    template=llm.system_prompt_template,
                    sub_model=sub_model,
                    sub_model_chars=sub_chars,
                    max_output_chars=shown,
                    recursion=Recursion(depth=self.depth, max_depth=limits.max_depth),
                ),
            },
            {"role": "user", "content": first_user_message(self.query)},
        ]
        self.log.write("system_prompt", text=messages[0]["content"])
        try:
            ledger.check()  # the tree may have spent its budget while this node waited for a sandbox
        except BudgetExceeded as exc:
            return self._stopped_by(exc)
        # Nothing may fail or wait between getting the sandbox and entering it (a warm one is running).
        sandbox = await tree.sandbox_for(self.depth, self.context, router)
        self._turns = turns = _Turns(
            self, router, sandbox, window=root_chars, shown=shown, chunk=chunk_chars(sub_chars)
        )
        try:
            async with sandbox:
                try:
                    # The wall clock bounds the turns, not the clean-up; stop() moves the deadline to now.
                    async with asyncio.timeout(ledger.remaining_s()) as self._deadline:
                        self.tree.running.add(self)
                        return await turns.loop(messages)
                finally:
                    self.tree.running.discard(self)
                    # Code still running in the sandbox (a thread, say) may not spend more, and no child
                    # outlives its parent: they are cancelled and their sandboxes removed first.
                    await router.aclose()
        except TimeoutError as exc:
            if self._deadline is None or not self._deadline.expired():
                return _failure(exc)
            return self._stopped_by(self._stopped or self._wall_time_spent())
        except BudgetExceeded as exc:
            return self._stopped_by(exc)
        except LLMReplyError as exc:  # what the model did write may still be of use
            return _failure(exc).model_copy(update={"answer": turns.partial_answer})
        except RLMBoxError as exc:
            return _failure(exc)
        finally:
            self.tree.kernel_restarts += turns.restarts
            self._misbehaviour = dict(sandbox.misbehaviour.counts)

    def _wall_time_spent(self) -> BudgetExceeded:
        max_wall_s = self.tree.settings.limits.max_wall_s
        return BudgetExceeded(f"ran out of the {max_wall_s:g}s wall-clock budget", limit="wall_time")

    def _stopped_by(self, reason: BudgetExceeded) -> NodeOutcome:
        return NodeOutcome(
            status="budget_exhausted",
            answer=self._turns.partial_answer if self._turns else None,
            error=str(reason),
            budget_limit=reason.limit,
        )

    async def _child(
        self,
        query: ChildQuery,
        model: str,
        ledger: Ledger,
        *,
        index: int,
        batch: int,
        iteration: int,
        cell: int,
    ) -> QueryOutcome:
        """Run one child RLM for this node's code; whatever happens to it comes back as an outcome."""
        child_id = f"{self.id}.{next(self._child_numbers)}"
        child = Node(
            self.tree,
            node_id=child_id,
            parent_id=self.id,
            query=query.prompt,
            context=query.context,
            model=model,
            ledger=ledger,
        )
        try:
            outcome = await child.run(parent_iteration=iteration, parent_cell=cell, index=index, batch=batch)
        except RLMBoxError as exc:  # its sandbox did not start, say
            outcome = _failure(exc)
        except Exception as exc:  # a bug must not take the parent (or the child's siblings) down
            log.exception("node.child_failed", child=child_id)
            outcome = _failure(exc)
        return outcome.for_parent(child_id)


class _Turns:
    """The turn loop of one node, with the state it keeps between turns."""

    def __init__(
        self,
        node: Node,
        router: SubCallRouter,
        sandbox: SandboxBackend,
        *,
        window: int,
        shown: int,
        chunk: int,
    ) -> None:
        """``window``: the root model's window in characters; ``shown``: how much of a turn's output the model
        reads; ``chunk``: the chunk size the prompts suggest."""
        self.node = node
        self.limits = node.tree.settings.limits
        self.ledger = node.ledger
        self.log = node.log
        self.router = router
        self.sandbox = sandbox
        self.partial_answer: str | None = None
        self.restarts = 0
        self.turn = 0
        self._repeated = ("", 0)  # the last reply, and how many times in a row the model sent it
        self._replies: set[str] = set()  # every reply the node has had
        self.window_chars = window
        self.output_chars = shown
        self.chunk_chars = chunk
        self._long_context = _longer_than(node.context, 2 * BLIND_PROMPT_CHARS)

    def turns_left(self) -> int:
        available = self.ledger.available("iterations")
        return int(available) if available is not None else 0

    async def loop(self, messages: list[dict[str, str]]) -> NodeOutcome:
        while self.ledger.has_iterations():
            self.ledger.start_iteration()
            self.turn += 1
            self.router.iteration = iteration = self.turn
            with bound_contextvars(iteration=iteration):
                if _chars(messages) > COMPACT_AT * self.window_chars and len(messages) > 2 + KEEP_RECENT:
                    messages[:] = await self._compact(messages, iteration)
                reply = await self._ask_fitting(messages, iteration)
                if reply.strip() in self._replies:
                    reply = await self._resample(messages, iteration, reply)
                self._replies.add(reply.strip())
                messages.append({"role": "assistant", "content": reply})
                if prose := _prose(reply):
                    self.partial_answer = prose
                repeats = self._count_repeats(reply)
                final, feedback = await self._run_reply(reply, iteration)
                if final is not None:
                    return NodeOutcome(status="completed", answer=final)
                if repeats > 1:
                    feedback = f"{repeated_reply_note()}\n\n{feedback}"
                messages.append({"role": "user", "content": feedback})
        return await self._last_chance(messages)

    async def _compact(
        self, messages: list[dict[str, str]], iteration: int, reason: str = "threshold"
    ) -> list[dict[str, str]]:
        """The conversation with its older turns replaced by a summary the model writes itself (the REPL keeps
        its state); without the summary when the model cannot give one."""
        older, recent = messages[2:-KEEP_RECENT], messages[-KEEP_RECENT:]
        request = [*messages[:2], *older, {"role": "user", "content": compaction_request()}]
        try:
            summary = strip_code_blocks(await self._ask_root(request, iteration, "compaction_call")).strip()
        except (BudgetExceeded, RLMBoxError) as exc:
            log.warning("node.compaction_failed", error=str(exc)[:200])
            summary = "(no summary: the model could not be asked for one)"
        compacted = [
            messages[0],
            {"role": "user", "content": compacted_message(messages[1]["content"], summary)},
            *recent,
        ]
        self.log.write(
            "compaction",
            iteration=iteration,
            reason=reason,
            messages_before=len(messages),
            chars_before=_chars(messages),
            chars_after=_chars(compacted),
            window_chars=self.window_chars,
            summary=text_digest(summary),
        )
        return compacted

    async def _ask_fitting(self, messages: list[dict[str, str]], iteration: int) -> str:
        """``_ask_root``; when the provider refuses the conversation as over the window (the estimate in
        characters can be wrong), it is compacted, or its longest output cut, and asked again."""
        for attempt in range(FIT_ATTEMPTS + 1):
            try:
                return await self._ask_root(messages, iteration)
            except LLMContextWindowError as exc:
                if attempt == FIT_ATTEMPTS or len(messages) <= 2:
                    raise
                if len(messages) > 2 + KEEP_RECENT:
                    messages[:] = await self._compact(messages, iteration, reason="window_refused")
                else:
                    longest = max(range(2, len(messages)), key=lambda i: len(messages[i]["content"]))
                    text = messages[longest]["content"]
                    cut = truncate_middle(text, len(text) // 4)
                    messages[longest] = {**messages[longest], "content": cut}
                    self.log.write("output_cut", iteration=iteration, message=longest, chars=len(text))
                log.warning("node.window_refused", attempt=attempt + 1, error=str(exc)[:200])
        raise AssertionError("unreachable")

    async def _resample(self, messages: list[dict[str, str]], iteration: int, reply: str) -> str:
        """The model's reply asked for again, sampled, because it repeated an earlier one; that reply when the
        provider refuses the sampling parameters."""
        params = {"temperature": RESAMPLE_TEMPERATURE, "seed": iteration}
        try:
            return await self._ask_root(messages, iteration, "resample_call", params=params)
        except LLMBadRequestError as exc:
            log.warning("node.resample_refused", error=str(exc)[:200])
            return reply

    async def _ask_root(
        self,
        messages: list[dict[str, str]],
        iteration: int,
        event: str = "root_call",
        params: dict[str, Any] | None = None,
    ) -> str:
        """One call of the node's model (with ``params`` for this call alone), charged to the ledger and
        written to the trajectory as ``event``."""
        model = self.node.model
        async with self.node.tree.model_calls:
            completion = await self.node.tree.lm.complete(
                model, messages, timeout_s=self.ledger.remaining_s(), params=params
            )
        self.ledger.record(Charge.of(completion))
        self.log.write(
            event,
            iteration=iteration,
            **({"params": params} if params else {}),
            model=model,
            messages=len(messages),
            prompt_chars=_chars(messages),
            new_message=text_digest(messages[-1]["content"]),
            reply=completion.text,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            duration_s=round(completion.duration_s, 4),
        )
        return completion.text

    async def _run_reply(self, reply: str, iteration: int) -> tuple[str | None, str]:
        """Run the reply's code blocks; returns (final answer or None, feedback for the next turn)."""
        blocks = extract_code_blocks(reply)
        limit = self.output_chars // max(1, len(blocks))
        descriptions: list[str] = []
        for index, code in enumerate(blocks, start=1):
            self.router.start_cell(index)
            try:
                cell = await self.sandbox.execute(code)
            except KernelDiedError as exc:
                descriptions.append(await self._recover_kernel(exc, iteration, index, code))
                break
            self.log.write(
                "cell",
                iteration=iteration,
                index=index,
                code=code,
                stdout=text_digest(cell.stdout, 20_000),
                stderr=text_digest(cell.stderr, 5_000),
                result=cell.result,
                error=None
                if cell.error is None
                else {"ename": cell.error.ename, "evalue": cell.error.evalue},
                final=cell.final,
                duration_s=round(cell.duration_s, 4),
                timed_out=cell.timed_out,
                kernel_restarted=cell.kernel_restarted,
            )
            if cell.final is not None:
                return cell.final, ""
            descriptions.append(describe_cell(index, len(blocks), cell, limit))
            longest = self.router.longest_prompt
            if longest is not None and len(longest) < BLIND_PROMPT_CHARS and self._long_context:
                descriptions.append(blind_sub_call_note(longest, self.chunk_chars))
        text_final = find_text_final(reply)
        if text_final is not None:
            try:
                answer = await self._resolve_final(text_final)
            except KernelDiedError as exc:
                descriptions.append(
                    await self._recover_kernel(exc, iteration, 0, f"FINAL_VAR({text_final.variable!r})")
                )
                return None, turn_feedback(descriptions, self.turns_left(), self.node.query)
            if answer is not None:
                return answer, ""
            descriptions.append(
                f"[no variable named {text_final.variable!r} in the REPL: set it first, or put the answer "
                "itself between the parentheses of FINAL()]"
            )
        if not blocks and text_final is None:
            return None, self._remind(reply)
        return None, turn_feedback(descriptions, self.turns_left(), self.node.query)

    def _remind(self, reply: str) -> str:
        """A precise reminder for a reply that ran nothing and answered nothing."""
        return no_code_reminder(reply, unfenced_code=looks_like_code(reply))

    def _count_repeats(self, reply: str) -> int:
        """How many times in a row the model has now sent this reply; LLMReplyError at STUCK_REPLIES (a
        model that repeats itself exactly will not stop doing so, and each time spends a turn)."""
        text = reply.strip()
        count = self._repeated[1] + 1 if text == self._repeated[0] else 1
        self._repeated = (text, count)
        if count >= STUCK_REPLIES:
            raise LLMReplyError(f"the root model sent the same reply {count} times in a row")
        return count

    async def _resolve_final(self, final: TextFinal) -> str | None:
        """The answer a final statement outside running code gives: the value of the variable it names (for
        ``FINAL(name)``, the name itself when there is no such variable), the value of its expression, or
        its text. None for ``FINAL_VAR`` of a variable that does not exist."""
        self.router.cell = 0
        if final.variable is not None:
            cell = await self.sandbox.execute(f"FINAL_VAR({final.variable!r})")
            found = cell.final is not None
            if found or final.answer is None:  # FINAL(word) with no such variable is the word: no note
                self.log.write("final_var", iteration=self.turn, variable=final.variable, found=found)
            return cell.final if found else final.answer
        if final.expression is not None:
            cell = await self.sandbox.execute(f"FINAL({final.expression})")
            self.log.write(
                "final_expression",
                iteration=self.turn,
                expression=final.expression,
                found=cell.final is not None,
            )
            return cell.final
        return final.answer

    async def _recover_kernel(self, exc: KernelDiedError, iteration: int, index: int, code: str) -> str:
        self.restarts += 1
        self.log.write(
            "kernel_died", iteration=iteration, index=index, code=code, reason=str(exc), oom=exc.oom
        )
        if self.restarts > self.limits.max_kernel_restarts:
            raise KernelDiedError(f"{exc} (and the kernel was already restarted {self.restarts - 1} times)")
        log.warning("run.kernel_restart", reason=str(exc))
        await self.sandbox.restart()
        return kernel_restarted_message(str(exc))

    async def _last_chance(self, messages: list[dict[str, str]]) -> NodeOutcome:
        """Out of iterations: ask once more for the best answer so far, without running code."""
        limit = self.ledger.limits.max_iterations
        try:
            self.ledger.check()
            reply = await self._ask_root(
                [*messages, {"role": "user", "content": last_chance_message()}], self.turn + 1
            )
        except (BudgetExceeded, RLMBoxError):
            reply = ""
        text_final = find_code_final(reply)  # no code runs now, but a FINAL in a code block is read
        answer = None
        if text_final is not None:
            try:
                answer = await self._resolve_final(text_final)
            except RLMBoxError:
                answer = None
        if answer is not None:
            self.partial_answer = answer
        elif text_final is None and (prose := _prose(reply)):
            self.partial_answer = prose
        return NodeOutcome(
            status="budget_exhausted",
            answer=self.partial_answer,
            error=f"reached the limit of {limit} iterations",
            budget_limit="iterations",
        )


def _prose(reply: str) -> str:
    """What a reply says outside its code, or "" when that is code too (never an answer)."""
    prose = strip_code_blocks(reply).strip()
    return "" if looks_like_code(prose) else prose


def output_chars(window_chars: int, max_output_chars: int) -> int:
    """How much of a turn's cell output the model is shown: ``max_output_chars``, less for a small window."""
    return min(max_output_chars, max(1_000, int(window_chars * OUTPUT_SHARE)))


def _longer_than(context: Any, chars: int) -> bool:
    """Whether ``context`` holds more than ``chars`` characters (looking at no more of it than that)."""
    if isinstance(context, str):
        return len(context) > chars
    items = context.items() if isinstance(context, dict) else context if isinstance(context, list) else ()
    total = 0
    for item in items:
        total += len(str(item)[: chars + 1])
        if total > chars:
            return True
    return False


def _chars(messages: list[dict[str, str]]) -> int:
    return sum(len(message["content"]) for message in messages)


def _failure(exc: BaseException) -> NodeOutcome:
    return NodeOutcome(status="error", error=str(exc), error_type=type(exc).__name__)


def context_digest(context: Any) -> dict[str, Any]:
    """A few facts about a context for the trajectory, never the context itself."""
    if isinstance(context, str):
        return {"type": "str", **text_digest(context, 200)}
    if isinstance(context, list | dict):
        return {"type": type(context).__name__, "items": len(context)}
    return {"type": type(context).__name__}
