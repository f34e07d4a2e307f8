//! File formats, apart from the architectures that use them: GGUF (llama.cpp's single file),
//! safetensors folders (Hugging Face's weights and `config.json`), PyTorch checkpoints, PEFT adapter folders, and the
//! tokenizers (Hugging Face folders and GGUF files) and the chat templates models carry. Nothing here knows a model family; `models` maps names and
//! configs onto architectures.

pub mod chat_template;
pub mod gguf;
pub mod lfs;
pub mod peft;
pub mod pth;
pub mod safetensors;
pub mod safetensors_header;
pub mod sentencepiece;
pub mod tokenizer;
pub mod weights;
