"""rlmbox's helper package inside the sandbox kernel (standard library and IPython only)."""

from rlmbox_kernel._api import BudgetExceededError, LLMQueryError, QueryFailed, install, reload_context

__all__ = ["BudgetExceededError", "LLMQueryError", "QueryFailed", "install", "reload_context"]
