//! File formats, apart from the architectures that use them: GGUF (llama.cpp's single file),
//! safetensors folders (Hugging Face's weights and `config.json`), PEFT adapter folders, and the
//! tokenizers GGUF files carry. Nothing here knows a model family; `models` maps names and
//! configs onto architectures.

pub mod gguf;
pub mod peft;
pub mod safetensors;
pub mod tokenizer;
