//! Learning-rate schedules as Hugging Face's Trainer has them: linear warmup from 0, then
//! constant, linear decay to 0, or cosine decay to 0.

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// A run of `total` steps with the first `warmup_ratio` of them warming up (rounded up).
    pub fn for_run(kind: ScheduleKind, peak: f32, warmup_ratio: f32, total: usize) -> Self {
        Schedule { kind, peak, warmup_steps: (warmup_ratio * total as f32).ceil() as usize, total_steps: total }
    }

    /// The learning rate of optimizer step `step` (counting from 0).
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / decay_steps as f32).min(1.0);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.peak * (1.0 - progress),
            ScheduleKind::Cosine => self.peak * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule { kind: ScheduleKind::Linear, peak: 1.0, warmup_steps: 4, total_steps: 14 };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(9) - 0.5).abs() < 1e-6);
        let c = Schedule { kind: ScheduleKind::Cosine, ..s };
        assert!((c.lr(9) - 0.5).abs() < 1e-6);
        assert!(c.lr(13) < 0.03);
        let k = Schedule { kind: ScheduleKind::Constant, ..s };
        assert_eq!(k.lr(13), 1.0);
    }
}
