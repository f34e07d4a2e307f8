//! Ollama's `Modelfile` for an exported GGUF (<https://github.com/ollama/ollama/blob/main/docs/modelfile.md>):
//! `FROM` the merged file (or the base, with `ADAPTER` the LoRA GGUF), `TEMPLATE` the model's
//! turns in Ollama's Go-template syntax, and one `PARAMETER stop` per string that ends a turn.
//!
//! Jinja chat templates are programs; Ollama's are Go templates over `.System`, `.Prompt` and
//! `.Response`. kiln recognizes the turn markup of the families it knows in the model's chat
//! template and writes the same turns the way Ollama's own library writes them:
//!
//! | markup in the template          | format   |
//! |---------------------------------|----------|
//! | `<|im_start|>`                  | ChatML (SmolLM2, Qwen)                   |
//! | `<|start_header_id|>`           | Llama 3                                  |
//! | `<start_of_turn>`               | Gemma (the system text opens the user turn) |
//! | `<|user|>` … `<|end|>`          | Phi-3                                    |
//! | `[INST]`                        | Mistral                                  |
//!
//! A model without a template (or one kiln does not recognize) gets `{{ .Prompt }}`: plain
//! completion, and the reason in [`Modelfile::note`].

/// A turn format Ollama can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnFormat {
    ChatMl,
    Llama3,
    Gemma,
    Phi3,
    Mistral,
}

impl TurnFormat {
    /// The format whose markup the Jinja `template` writes.
    pub fn detect(template: &str) -> Option<TurnFormat> {
        [
            ("<|im_start|>", TurnFormat::ChatMl),
            ("<|start_header_id|>", TurnFormat::Llama3),
            ("<start_of_turn>", TurnFormat::Gemma),
            ("<|user|>", TurnFormat::Phi3),
            ("[INST]", TurnFormat::Mistral),
        ]
        .into_iter()
        .find(|(mark, _)| template.contains(mark))
        .map(|(_, f)| f)
    }

    /// The Go template (Ollama's `.System`/`.Prompt`/`.Response` form).
    pub fn go_template(self) -> &'static str {
        match self {
            TurnFormat::ChatMl => {
                "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
            }
            TurnFormat::Llama3 => {
                "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
            }
            TurnFormat::Gemma => {
                "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n"
            }
            TurnFormat::Phi3 => {
                "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n"
            }
            TurnFormat::Mistral => {
                "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]{{ .Response }}</s>"
            }
        }
    }

    /// Strings that end an assistant turn.
    pub fn stops(self) -> &'static [&'static str] {
        match self {
            TurnFormat::ChatMl => &["<|im_start|>", "<|im_end|>"],
            TurnFormat::Llama3 => &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            TurnFormat::Gemma => &["<end_of_turn>"],
            TurnFormat::Phi3 => &["<|end|>", "<|user|>", "<|assistant|>"],
            TurnFormat::Mistral => &["[INST]", "[/INST]"],
        }
    }
}

/// A Modelfile's lines.
pub struct Modelfile {
    pub from: String,
    pub adapter: Option<String>,
    pub format: Option<TurnFormat>,
    /// More stop strings (the model's own stop tokens), added after the format's.
    pub stops: Vec<String>,
    /// Why there is no TEMPLATE with turns, when there is none.
    pub note: Option<String>,
}

impl Modelfile {
    /// `template` is the model's Jinja chat template, if it has one.
    pub fn new(from: String, adapter: Option<String>, template: Option<&str>, stops: Vec<String>) -> Modelfile {
        let format = template.and_then(TurnFormat::detect);
        let note = match (template, format) {
            (None, _) => Some("the model has no chat template: the Modelfile's TEMPLATE is plain completion".into()),
            (Some(_), None) => Some(
                "kiln does not recognize the model's chat template: the Modelfile's TEMPLATE is plain completion"
                    .into(),
            ),
            _ => None,
        };
        Modelfile { from, adapter, format, stops, note }
    }

    pub fn render(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out =
            String::from("# Written by kiln export. Create the model with: ollama create NAME -f Modelfile\n");
        out += &format!("FROM {}\n", self.from);
        if let Some(a) = &self.adapter {
            out += &format!("ADAPTER {a}\n");
        }
        let template = self.format.map_or("{{ .Prompt }}", TurnFormat::go_template);
        out += &format!("TEMPLATE \"\"\"{template}\"\"\"\n");
        let mut stops: Vec<&str> = self.format.map_or(&[][..], TurnFormat::stops).to_vec();
        for s in &self.stops {
            if !s.is_empty() && !stops.contains(&s.as_str()) {
                stops.push(s);
            }
        }
        for s in stops {
            out += &format!("PARAMETER stop {}\n", quote(s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_models_get_ollamas_chatml_turns_and_stops() {
        let jinja = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
        let m =
            Modelfile::new("./model.gguf".into(), None, Some(jinja), vec!["<|endoftext|>".into(), "<|im_end|>".into()]);
        let text = m.render();
        assert!(text.contains("FROM ./model.gguf\n"), "{text}");
        assert!(text.contains("TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>"), "{text}");
        assert!(text.contains("<|im_start|>assistant\n{{ .Response }}<|im_end|>\n\"\"\"\n"), "{text}");
        // The format's stops, then the model's own, each once.
        assert_eq!(
            text.lines().filter(|l| l.starts_with("PARAMETER stop")).collect::<Vec<_>>(),
            ["PARAMETER stop \"<|im_start|>\"", "PARAMETER stop \"<|im_end|>\"", "PARAMETER stop \"<|endoftext|>\""]
        );
        assert!(!text.contains("ADAPTER") && m.note.is_none());
    }

    #[test]
    fn adapters_gemma_turns_and_plain_models() {
        let m = Modelfile::new(
            "/models/base.gguf".into(),
            Some("./adapter.gguf".into()),
            Some("<start_of_turn>user"),
            vec![],
        );
        let text = m.render();
        assert!(text.contains("FROM /models/base.gguf\nADAPTER ./adapter.gguf\n"), "{text}");
        assert!(text.contains("<start_of_turn>model\n{{ .Response }}<end_of_turn>"), "{text}");
        assert!(text.contains("PARAMETER stop \"<end_of_turn>\""), "{text}");
        let plain = Modelfile::new("./m.gguf".into(), None, None, vec!["w\"1".into()]);
        assert!(
            plain.render().contains("TEMPLATE \"\"\"{{ .Prompt }}\"\"\"\nPARAMETER stop \"w\\\"1\"\n"),
            "{}",
            plain.render()
        );
        assert!(plain.note.unwrap().contains("no chat template"));
        assert_eq!(TurnFormat::detect("<|start_header_id|>"), Some(TurnFormat::Llama3));
        assert_eq!(TurnFormat::detect("<|user|>\n{{ m }}<|end|>"), Some(TurnFormat::Phi3));
        assert_eq!(TurnFormat::detect("[INST] x [/INST]"), Some(TurnFormat::Mistral));
    }
}
