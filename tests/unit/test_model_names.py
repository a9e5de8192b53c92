"""How a model is named outside the server: a local directory by its folder name, a hub id as it is. The same
rule lists the allowed models, resolves a job's model, and names the base in a downloaded adapter."""

from __future__ import annotations

from app.core.settings import Settings, public_model_name


def test_a_directory_is_named_by_its_folder_and_a_hub_id_as_it_is():
    assert public_model_name("/srv/models/stories260k") == "stories260k"
    assert public_model_name("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_allowed_models_resolve_and_list_by_the_same_names(tmp_path):
    local = tmp_path / "tiny-llama"
    local.mkdir()
    settings = Settings(allowed_models=f"meta-llama/Llama-3.2-1B,{local}")
    assert settings.public_model_ids() == ["meta-llama/Llama-3.2-1B", "tiny-llama"]
    assert settings.resolved_models() == {
        "meta-llama/Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
        "tiny-llama": str(local.resolve()),
        str(local.resolve()): str(local.resolve()),  # a directory's path names it too
    }
    # whichever name a job used, its adapter names the base as GET /v1/models does
    assert {public_model_name(source) for source in settings.resolved_models().values()} == set(
        settings.public_model_ids()
    )
