"""Command.validate for every command of the table (omnibroker.commands): required properties, unknown ones, types
(a bool is not an int), defaults; the values each command's properties take are read from the table itself."""
import pytest

from omnibroker.commands import COMMANDS
from omnibroker.protocol import CommandError, ErrorCode

GOOD = {str: "hello", int: 7, float: 1.5, bool: True, dict: {"go": {}}, list: ["x"]}


def types_of(prop) -> tuple[type, ...]:
    return prop.type if isinstance(prop.type, tuple) else (prop.type,)


def good_value(prop):
    return GOOD[types_of(prop)[0]]


def wrong_value(prop):
    """A JSON value of none of the property's types (str, dict and list are no subclass of another JSON type)."""
    types = types_of(prop)
    return next(v for v in ("text", {"a": 1}, ["x"]) if type(v) not in types)


def required(cmd) -> dict:
    return {k: good_value(p) for k, p in cmd.properties.items() if p.required}


def refused(cmd, props: dict) -> str:
    with pytest.raises(CommandError) as e:
        cmd.validate(props)
    assert e.value.code == ErrorCode.BAD_PROPERTY
    return e.value.reason


COMMAND_PROPS = [(name, key) for name, cmd in COMMANDS.items() for key in cmd.properties]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_required_properties_alone_are_accepted_and_defaults_filled(name):
    cmd = COMMANDS[name]
    out = cmd.validate(required(cmd))
    for key, prop in cmd.properties.items():
        if prop.required:
            assert out[key] == good_value(prop)
        elif prop.default is not None:
            assert out[key] == prop.default
        else:
            assert key not in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unknown_property_is_refused_naming_the_known_ones(name):
    cmd = COMMANDS[name]
    reason = refused(cmd, dict(required(cmd), plugni="typo"))
    assert reason.startswith(f"{name}: unknown properties ['plugni']")
    assert f"known: {sorted(cmd.properties)}" in reason


@pytest.mark.parametrize("name,key", [(n, k) for n, k in COMMAND_PROPS if COMMANDS[n].properties[k].required])
def test_a_missing_required_property_is_refused_by_name(name, key):
    cmd = COMMANDS[name]
    props = required(cmd)
    del props[key]
    assert refused(cmd, props) == f"{name}: property {key!r} is required"
    props[key] = None                                   # JSON null counts as missing
    assert refused(cmd, props) == f"{name}: property {key!r} is required"


@pytest.mark.parametrize("name,key", COMMAND_PROPS)
def test_each_property_takes_its_type_and_refuses_another(name, key):
    cmd = COMMANDS[name]
    prop = cmd.properties[key]
    value = good_value(prop)
    if name == "logs" and key == "count":
        value = 10                                      # within logs' own range check
    if name == "logs" and key == "source":
        value = "vite"                                  # one of the log sources (logs checks the name)
    assert cmd.validate(dict(required(cmd), **{key: value}))[key] == value
    bad = wrong_value(prop)
    reason = refused(cmd, dict(required(cmd), **{key: bad}))
    names = " or ".join(t.__name__ for t in types_of(prop))
    assert reason == f"{name}: property {key!r} must be {names}, not {type(bad).__name__}"


@pytest.mark.parametrize("name,key", [(n, k) for n, k in COMMAND_PROPS
                                      if bool not in types_of(COMMANDS[n].properties[k])])
def test_a_bool_is_refused_where_bool_is_not_named(name, key):
    cmd = COMMANDS[name]
    reason = refused(cmd, dict(required(cmd), **{key: True}))
    assert reason.endswith(", not bool")


def test_a_number_property_takes_an_int_or_a_float_where_both_are_named():
    invoke = COMMANDS["invoke"]
    base = {"plugin": "p", "method": "/m"}
    assert invoke.validate(dict(base, timeout=3))["timeout"] == 3
    assert invoke.validate(dict(base, timeout=2.5))["timeout"] == 2.5
    assert invoke.validate(base) == dict(base, request="", timeout=10.0)


def test_logs_checks_its_count_range_after_the_types():
    logs = COMMANDS["logs"]
    assert "count must be between 0 and" in refused(logs, {"plugin": "p", "count": -1})
    assert logs.validate({"plugin": "p"}) == {"plugin": "p", "count": 200}
