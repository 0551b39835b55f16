from outlines_vllm.launch import LocalServer, engine_kwargs, server_args


def test_engine_kwargs_let_the_caller_override_defaults():
    assert engine_kwargs(max_model_len=512)["max_model_len"] == 512


def test_server_args_turn_keywords_into_flags():
    args = server_args({"enforce_eager": True, "max_model_len": 2048, "trust_remote_code": False, "x": None})
    assert args == ["--enforce-eager", "--max-model-len", "2048"]


def test_local_server_command_runs_the_api_server_module_on_loopback():
    server = LocalServer("/models/m", served_model_name="m", port=8123, extra_args=["--seed", "1"])
    assert server.command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert server.command[server.command.index("--host") + 1] == "127.0.0.1"
    assert server.command[-2:] == ["--seed", "1"]
    assert server.base_url == "http://127.0.0.1:8123"
