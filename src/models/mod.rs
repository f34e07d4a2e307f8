pub mod gguf;
pub mod gguf_tokenizer;
