"""The error decision matrix: the default table, the adjustment rules, classify, overrides."""

import itertools
import tomllib

import attrs
import msgspec
import pytest

from strategies.matrix import (
    DEFAULT_MATRIX,
    EXIT_REASONS,
    Decision,
    ErrorCategory,
    MatrixError,
    OnExhausted,
    Recovery,
    Rule,
    Severity,
    classify,
    decide,
    override_matrix,
    retry_delay,
)

# The README's table, written out again so a change to the code cannot silently change it.
TABLE = {
    "initialization_error": ("critical", "circuit_break", 3, "exponential"),
    "connection_error": ("major", "backoff_retry", 5, "exponential"),
    "communication_error": ("major", "immediate_retry", 3, "linear"),
    "timeout_error": ("major", "backoff_retry", 2, "exponential"),
    "resource_error": ("critical", "circuit_break", 1, "none"),
    "health_check_error": ("minor", "backoff_retry", 3, "linear"),
    "session_error": ("minor", "immediate_retry", 2, "none"),
    "python_error": ("major", "failover", 1, "none"),
    "system_error": ("critical", "abandon", 0, "none"),
}
CATEGORY_LIST = (
    "initialization_error, connection_error, communication_error, timeout_error, "
    "resource_error, health_check_error, session_error, python_error, system_error"
)


# -- the enums and the default table ---------------------------------------------------------


def test_enums_are_str_enums_valued_as_their_names():
    assert list(TABLE) == [c.value for c in ErrorCategory]
    assert ["critical", "major", "minor", "warning"] == [s.value for s in Severity]
    assert ["immediate_retry", "backoff_retry", "circuit_break", "failover", "abandon"] == [
        r.value for r in Recovery
    ]
    for enum_cls in (ErrorCategory, Severity, Recovery):
        assert all(member.name == member == member.value for member in enum_cls)


@pytest.mark.parametrize("category", list(TABLE))
def test_default_row(category):
    severity, recovery, max_retries, backoff = TABLE[category]
    rule = DEFAULT_MATRIX[ErrorCategory(category)]
    assert (
        Rule(severity=severity, recovery=recovery, max_retries=max_retries, backoff=backoff) == rule
    )
    assert (Severity(severity), Recovery(recovery), max_retries, backoff) == (
        rule.severity,
        rule.recovery,
        rule.max_retries,
        rule.backoff,
    )
    assert DEFAULT_MATRIX[category] is rule  # str keys work: the enum is a str


def test_default_matrix_covers_every_category_and_is_read_only():
    assert list(ErrorCategory) == list(DEFAULT_MATRIX)
    with pytest.raises(TypeError):
        DEFAULT_MATRIX[ErrorCategory.system_error] = DEFAULT_MATRIX[ErrorCategory.python_error]


def test_rules_and_decisions_are_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT_MATRIX[ErrorCategory.timeout_error].max_retries = 9
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        decide("timeout_error").recovery = Recovery.abandon


def test_rule_converts_strings_and_lists():
    rule = Rule(severity="minor", recovery="failover", max_retries=0, backoff=[1, 2.5])
    assert (Severity.minor, Recovery.failover, (1.0, 2.5)) == (
        rule.severity,
        rule.recovery,
        rule.backoff,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "severity",
            "fatal",
            r"^severity: expected one of critical, major, minor, warning, got 'fatal'$",
        ),
        ("max_retries", -1, r"^max_retries: expected an integer >= 0, got -1$"),
        (
            "backoff",
            "expo",
            r"^backoff: expected one of none, linear, exponential, fibonacci, decorrelated_jitter, immediate, a list of seconds or a callable, got 'expo'$",
        ),
    ],
)
def test_rule_rejects_bad_fields_with_matrix_error(field, value, message):
    fields = {"severity": "major", "recovery": "abandon", "max_retries": 1, "backoff": "none"}
    with pytest.raises(MatrixError, match=message):
        Rule(**{**fields, field: value})


# -- decide: the adjustment rules ------------------------------------------------------------

UPGRADE = {"minor": "major", "major": "critical", "critical": "critical", "warning": "warning"}


def expected_decision(category, attempt, affecting_all):
    """The matrix's rules (README), spelled out independently of the implementation."""
    severity, recovery, max_retries, backoff = TABLE[category]
    if attempt >= 4:
        severity = UPGRADE[severity]
    if affecting_all:
        severity = "critical"
    if severity == "critical" and attempt >= 3:
        recovery = "abandon"
    return (category, severity, recovery, max_retries, backoff, attempt)


@pytest.mark.parametrize(
    ("category", "attempt", "affecting_all"),
    list(itertools.product(list(TABLE), range(1, 7), [False, True])),
)
def test_decide_applies_every_rule_in_order(category, attempt, affecting_all):
    decision = decide(category, attempt, affecting_all=affecting_all)
    actual = (
        decision.category,
        decision.severity,
        decision.recovery,
        decision.max_retries,
        decision.backoff,
        decision.attempt,
    )
    assert expected_decision(category, attempt, affecting_all) == actual
    assert isinstance(decision.category, ErrorCategory)
    assert isinstance(decision.severity, Severity)
    assert isinstance(decision.recovery, Recovery)


@pytest.mark.parametrize(
    ("category", "attempt", "affecting_all", "severity", "recovery"),
    [
        ("health_check_error", 3, False, "minor", "backoff_retry"),  # no upgrade yet
        ("health_check_error", 4, False, "major", "backoff_retry"),  # one step only
        ("health_check_error", 9, False, "major", "backoff_retry"),  # never two steps
        ("connection_error", 4, False, "critical", "abandon"),  # upgraded, then abandoned
        ("timeout_error", 3, False, "major", "backoff_retry"),
        ("initialization_error", 2, False, "critical", "circuit_break"),
        ("initialization_error", 3, False, "critical", "abandon"),
        ("session_error", 1, True, "critical", "immediate_retry"),  # critical, attempt 1
        ("python_error", 3, True, "critical", "abandon"),
        ("session_error", 4, False, "major", "immediate_retry"),  # keeps the row's recovery
    ],
)
def test_decide_examples(category, attempt, affecting_all, severity, recovery):
    decision = decide(category, attempt, affecting_all=affecting_all)
    assert (severity, recovery) == (decision.severity, decision.recovery)


def test_warning_severity_is_never_upgraded_by_attempts():
    matrix = override_matrix(DEFAULT_MATRIX, {"session_error": {"severity": "warning"}})
    assert [Severity.warning] * 6 == [
        decide("session_error", n, matrix=matrix).severity for n in range(1, 7)
    ]
    assert (
        Severity.critical == decide("session_error", 1, affecting_all=True, matrix=matrix).severity
    )


def test_decide_uses_the_given_matrix_and_falls_back_for_missing_rows():
    matrix = {ErrorCategory.timeout_error: DEFAULT_MATRIX[ErrorCategory.python_error]}
    assert Recovery.failover == decide("timeout_error", matrix=matrix).recovery
    assert Recovery.backoff_retry == decide("connection_error", matrix=matrix).recovery


def test_decide_rejects_unknown_categories_and_bad_attempts():
    with pytest.raises(
        MatrixError, match=r"^category: expected one of " + CATEGORY_LIST + r", got 'oops'$"
    ):
        decide("oops")
    with pytest.raises(ValueError, match=r"^attempt: expected an integer >= 1, got 0$"):
        decide("timeout_error", 0)


# -- retry_delay -----------------------------------------------------------------------------


def delays(rule_or_decision, **options):
    return [retry_delay(rule_or_decision, n, **options) for n in range(1, 7)]


@pytest.mark.parametrize(
    ("category", "expected"),
    [
        ("communication_error", [0, 0.1, 0.2, 0.2, 0.2, 0.2]),  # immediate_retry wins
        ("session_error", [0, 0.1, 0.2, 0.2, 0.2, 0.2]),
        ("connection_error", [1, 2, 4, 8, 16, 30]),
        ("timeout_error", [1, 2, 4, 8, 16, 30]),
        ("initialization_error", [1, 2, 4, 8, 16, 30]),
        ("health_check_error", [1, 2, 3, 4, 5, 6]),
        ("resource_error", [0, 0, 0, 0, 0, 0]),
        ("python_error", [0, 0, 0, 0, 0, 0]),
        ("system_error", [0, 0, 0, 0, 0, 0]),
    ],
)
def test_retry_delay_for_each_default_row(category, expected):
    assert expected == delays(DEFAULT_MATRIX[ErrorCategory(category)])
    assert expected == delays(decide(category))


def test_retry_delay_scales_backoff_but_not_the_immediate_table():
    assert [0.01, 0.02, 0.04, 0.08, 0.16, 0.32] == delays(
        decide("connection_error"), base_delay=0.01
    )
    assert [0, 0.1, 0.2, 0.2, 0.2, 0.2] == delays(decide("communication_error"), base_delay=10)
    assert [0, 0.1, 0.15, 0.15, 0.15, 0.15] == delays(decide("session_error"), max_delay=0.15)
    assert [1, 2, 4, 5, 5, 5] == delays(decide("connection_error"), max_delay=5)


def test_retry_delay_with_table_and_callable_backoffs():
    table = Rule(severity="major", recovery="backoff_retry", max_retries=3, backoff=(0.5, 2))
    assert [0.5, 2, 2, 2, 2, 2] == delays(table)
    fn = attrs.evolve(table, backoff=lambda n: 10 * n)
    assert [10, 20, 30, 30, 30, 30] == delays(fn)


def test_retry_delay_with_decorrelated_jitter_uses_the_rng():
    class Top:
        def uniform(self, a, b):
            return b

    rule = Rule(
        severity="major", recovery="backoff_retry", max_retries=3, backoff="decorrelated_jitter"
    )
    assert [3, 9, 27, 30, 30, 30] == delays(rule, rng=Top())


def test_retry_delay_accepts_a_decision_built_by_hand():
    decision = Decision(
        category="session_error",
        severity="minor",
        recovery="immediate_retry",
        max_retries=2,
        backoff="none",
    )
    assert 0.1 == retry_delay(decision, 2)


# -- classify --------------------------------------------------------------------------------


class Declared(Exception):
    """Like the supervisor's own errors: carries its category."""

    def __init__(self, category):
        super().__init__("declared")
        self.category = category


class SlowRead(TimeoutError):
    pass


class SlowConnection(TimeoutError):
    category = "resource_error"


def msgspec_errors():
    try:
        msgspec.json.decode(b"{")
    except msgspec.DecodeError as exc:
        decode_error = exc
    try:
        msgspec.json.decode(b'"x"', type=int)
    except msgspec.ValidationError as exc:
        validation_error = exc
    return [decode_error, validation_error, msgspec.EncodeError("too deep")]


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (TimeoutError("slow"), "timeout_error"),
        (SlowRead("slow"), "timeout_error"),
        (ConnectionResetError(), "connection_error"),
        (ConnectionRefusedError(), "connection_error"),
        (BrokenPipeError(), "connection_error"),
        (EOFError(), "connection_error"),
        (MemoryError(), "resource_error"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "communication_error"),
        (UnicodeEncodeError("ascii", "\xff", 0, 1, "bad"), "communication_error"),
        *[(exc, "communication_error") for exc in msgspec_errors()],
        (ValueError("x"), "python_error"),
        (KeyError("x"), "python_error"),
        (FileNotFoundError("x"), "python_error"),
        (ZeroDivisionError(), "python_error"),
        (KeyboardInterrupt(), "system_error"),
        (SystemExit(1), "system_error"),
        (Declared("session_error"), "session_error"),
        (Declared(ErrorCategory.health_check_error), "health_check_error"),
        (Declared("not_a_category"), "python_error"),  # invalid declaration: type decides
        (Declared(None), "python_error"),
        (SlowConnection(), "resource_error"),  # the declared category is checked first
    ],
    ids=repr,
)
def test_classify_exceptions(error, category):
    assert ErrorCategory(category) == classify(error)


@pytest.mark.parametrize(("reason", "category"), sorted(EXIT_REASONS.items()))
def test_classify_every_known_exit_reason(reason, category):
    assert category == classify(reason)


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("killed", "connection_error"),
        ("crashed", "connection_error"),
        ("exited", "connection_error"),
        ("port_exited", "connection_error"),
        ("connection_closed", "connection_error"),
        ("timeout", "timeout_error"),
        ("init_failed", "initialization_error"),
        ("health_check_failed", "health_check_error"),
        ("heartbeat_missed", "health_check_error"),
        ("memory_limit", "resource_error"),
        ("checkout_failed", "resource_error"),
        ("protocol_error", "communication_error"),
        ("encode_error", "communication_error"),
        ("decode_error", "communication_error"),
        ("session_not_found", "session_error"),
        ("session_lost", "session_error"),
        ("python_exception", "python_error"),
        ("something_else", "system_error"),
        ("", "system_error"),
        ("Normal", "system_error"),
        *[(c, c) for c in TABLE],
        *[(ErrorCategory(c), c) for c in TABLE],
        (("port_exited", 1), "connection_error"),  # the original design's scenarios
        (("timeout", "operation"), "timeout_error"),
        (("init_failed", ("nested", 1)), "initialization_error"),
        ((), "system_error"),
        (42, "system_error"),
        (None, "system_error"),
    ],
    ids=repr,
)
def test_classify_exit_reasons_and_tuples(reason, category):
    assert ErrorCategory(category) == classify(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "normal",
        "shutdown",
        "shutdown:reached_max_restart_intensity",
        ("shutdown", "x"),
        ("normal",),
    ],
)
def test_classify_returns_none_for_clean_exits(reason):
    assert classify(reason) is None


# -- override_matrix -------------------------------------------------------------------------


def test_partial_row_overrides_only_the_given_fields():
    matrix = override_matrix(DEFAULT_MATRIX, {"timeout_error": {"max_retries": 4}})
    expected = attrs.evolve(DEFAULT_MATRIX[ErrorCategory.timeout_error], max_retries=4)
    assert expected == matrix[ErrorCategory.timeout_error]
    assert {c: r for c, r in DEFAULT_MATRIX.items() if c != "timeout_error"} == {
        c: r for c, r in matrix.items() if c != "timeout_error"
    }
    assert 2 == DEFAULT_MATRIX[ErrorCategory.timeout_error].max_retries  # base untouched


def test_override_every_field_and_keep_category_order():
    patch = {"severity": "minor", "recovery": "failover", "max_retries": 0, "backoff": [0.5, 1]}
    matrix = override_matrix(DEFAULT_MATRIX, {"system_error": patch})
    assert (
        Rule(severity="minor", recovery="failover", max_retries=0, backoff=(0.5, 1.0))
        == matrix["system_error"]
    )
    assert list(ErrorCategory) == list(matrix)
    with pytest.raises(TypeError):
        matrix[ErrorCategory.system_error] = DEFAULT_MATRIX[ErrorCategory.system_error]


def test_override_accepts_rules_enum_keys_and_callables():
    rule = Rule(severity="warning", recovery="abandon", max_retries=0, backoff="none")
    fn = lambda n: n  # noqa: E731
    matrix = override_matrix(
        DEFAULT_MATRIX, {ErrorCategory.python_error: rule, "timeout_error": {"backoff": fn}}
    )
    assert rule is matrix[ErrorCategory.python_error]
    assert fn is matrix[ErrorCategory.timeout_error].backoff


def test_overrides_stack():
    first = override_matrix(DEFAULT_MATRIX, {"timeout_error": {"max_retries": 4}})
    second = override_matrix(first, {"timeout_error": {"backoff": "linear"}})
    assert (4, "linear") == (second["timeout_error"].max_retries, second["timeout_error"].backoff)


def test_toml_table_feeds_override_matrix():
    document = tomllib.loads(
        """
        [errors.timeout_error]
        max_retries = 4

        [errors.health_check_error]
        backoff = [0.5, 1.0, 2.0]
        recovery = "circuit_break"
        """
    )
    matrix = override_matrix(DEFAULT_MATRIX, document["errors"])
    assert 4 == matrix["timeout_error"].max_retries
    assert (0.5, 1.0, 2.0) == matrix["health_check_error"].backoff
    assert Recovery.circuit_break == decide("health_check_error", matrix=matrix).recovery


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"timeout_error": {"max_retries": -1}},
            r"errors\.timeout_error\.max_retries: expected an integer >= 0, got -1",
        ),
        (
            {"timeout_error": {"max_retries": "3"}},
            r"errors\.timeout_error\.max_retries: expected an integer >= 0, got '3'",
        ),
        (
            {"timeout_error": {"max_retries": 1.5}},
            r"errors\.timeout_error\.max_retries: expected an integer >= 0, got 1\.5",
        ),
        (
            {"timeout_error": {"max_retries": True}},
            r"errors\.timeout_error\.max_retries: expected an integer >= 0, got True",
        ),
        (
            {"timeout_eror": {"max_retries": 1}},
            r"errors\.timeout_eror: unknown category; expected one of " + CATEGORY_LIST,
        ),
        ({3: {}}, r"errors\.3: unknown category; expected one of " + CATEGORY_LIST),
        (
            {"timeout_error": {"retries": 1}},
            r"errors\.timeout_error\.retries: unknown field; expected one of severity, recovery, max_retries, backoff, on_exhausted",
        ),
        (
            {"timeout_error": {"severity": "fatal"}},
            r"errors\.timeout_error\.severity: expected one of critical, major, minor, warning, got 'fatal'",
        ),
        (
            {"timeout_error": {"severity": 1}},
            r"errors\.timeout_error\.severity: expected one of critical, major, minor, warning, got 1",
        ),
        (
            {"timeout_error": {"recovery": "retry"}},
            r"errors\.timeout_error\.recovery: expected one of immediate_retry, backoff_retry, circuit_break, failover, abandon, got 'retry'",
        ),
        (
            {"timeout_error": {"backoff": "expo"}},
            r"errors\.timeout_error\.backoff: expected one of none, linear, exponential, fibonacci, decorrelated_jitter, immediate, a list of seconds or a callable, got 'expo'",
        ),
        (
            {"timeout_error": {"backoff": []}},
            r"errors\.timeout_error\.backoff: expected a non-empty list of seconds, got \[\]",
        ),
        (
            {"timeout_error": {"backoff": [1, -2]}},
            r"errors\.timeout_error\.backoff\[1\]: expected a number of seconds >= 0, got -2",
        ),
        (
            {"timeout_error": {"backoff": [1, "2"]}},
            r"errors\.timeout_error\.backoff\[1\]: expected a number of seconds >= 0, got '2'",
        ),
        (
            {"timeout_error": {"backoff": 5}},
            r"errors\.timeout_error\.backoff: expected a schedule name, a list of seconds or a callable, got 5",
        ),
        (
            {"timeout_error": 5},
            r"errors\.timeout_error: expected a Rule or a table of severity, recovery, max_retries, backoff, on_exhausted, got 5",
        ),
        (
            ["timeout_error"],
            r"errors: expected a table of category -> row, got \['timeout_error'\]",
        ),
    ],
)
def test_override_errors_name_the_field_path_and_the_bad_value(overrides, message):
    with pytest.raises(MatrixError, match=f"^{message}$"):
        override_matrix(DEFAULT_MATRIX, overrides)


def test_matrix_error_is_a_value_error_with_field_and_value():
    with pytest.raises(ValueError) as info:
        override_matrix(
            DEFAULT_MATRIX, {"timeout_error": {"max_retries": -1}}, path="tree.children[2].errors"
        )
    assert isinstance(info.value, MatrixError)
    assert "tree.children[2].errors.timeout_error.max_retries" == info.value.field
    assert -1 == info.value.value
    assert str(info.value).startswith("tree.children[2].errors.timeout_error.max_retries: ")


def test_a_failed_override_leaves_nothing_half_applied():
    with pytest.raises(MatrixError):
        override_matrix(DEFAULT_MATRIX, {"timeout_error": {"max_retries": 9, "backoff": "bad"}})
    assert 2 == DEFAULT_MATRIX[ErrorCategory.timeout_error].max_retries


def test_on_exhausted_is_a_row_field_defaulting_to_abandon():
    assert all(rule.on_exhausted == OnExhausted.abandon for rule in DEFAULT_MATRIX.values())
    matrix = override_matrix(DEFAULT_MATRIX, {"connection_error": {"on_exhausted": "escalate"}})
    assert matrix[ErrorCategory.connection_error].on_exhausted == OnExhausted.escalate
    with pytest.raises(MatrixError, match=r"^errors\.connection_error\.on_exhausted: expected "
                       r"one of abandon, escalate, got 'explode'$"):
        override_matrix(DEFAULT_MATRIX, {"connection_error": {"on_exhausted": "explode"}})
