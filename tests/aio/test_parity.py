"""The blocking client's call, error, retry, restart and session tests, run again through
the asyncio client (`start_tree` here starts an asyncio App; see conftest.py): the same
assertions hold for both, since both go by the same decisions."""

from __future__ import annotations

import pytest

from tests.pool.conftest import ex, gate  # noqa: F401  (fixtures)
from tests.pool.test_failures import (  # noqa: F401
    test_a_call_sent_to_a_dead_worker_is_dispatched_again,
    test_async_calls_in_flight_fail_unless_idempotent,
    test_the_pool_survives_repeated_crashes,
)
from tests.pool.test_sessions import (  # noqa: F401
    pool,
    test_a_recycled_worker_loses_its_sessions,
    test_a_session_sticks_to_one_worker_and_keeps_its_state,
    test_end_session_drops_the_state_and_the_affinity,
    test_on_lost_reassign_moves_the_session_with_empty_state,
    test_the_next_call_after_the_workers_death_raises_session_lost,
)
from tests.runtime.conftest import start_as  # noqa: F401  (fixture)
from tests.runtime.test_calls import (  # noqa: F401
    app,
    test_a_command_that_raises_is_a_command_error_and_the_worker_keeps_serving,
    test_call_in_flight_when_the_worker_dies_raises_worker_crashed_at_once,
    test_call_returns_the_result_with_args_and_kwargs,
    test_calls_from_many_threads_are_never_mixed,
    test_cast_does_not_wait,
    test_proxy_and_options,
    test_service_worker_raising_is_restarted,
    test_service_worker_serves_calls_while_run_loops,
    test_timed_out_call_raises_and_the_late_reply_is_discarded,
    test_unencodable_argument_fails_in_the_caller,
    test_unencodable_result_is_an_encode_error,
    test_unknown_method_is_a_command_error,
    test_unknown_paths,
)
from tests.runtime.test_matrix import (  # noqa: F401
    test_a_timed_out_call_restarts_the_worker_as_a_timeout_error,
    test_call_errors_are_events_in_the_callers_process,
    test_calls_go_to_the_fallback_during_a_backoff_delay,
    test_calls_go_to_the_fallback_while_the_circuit_is_open,
    test_circuit_opens_after_the_budget_then_half_opens_and_closes,
    test_idempotent_method_is_resent_after_a_crash,
    test_idempotent_true_on_the_call_opts_in,
    test_non_idempotent_call_in_flight_raises_worker_crashed_once,
    test_on_timeout_ignore_keeps_the_worker,
    test_restart_child_of_an_open_circuit_closes_it_and_cancels_the_trial,
    test_retry_false_disables_resending,
    test_sigkill_is_a_connection_error_restarted_at_once,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
