//! Choosing an adapter: list what wgpu sees, prefer a discrete GPU, or take the one the user
//! named with `--adapter NAME|INDEX` or `KILN_ADAPTER`.

use crate::error::{Error, Result};

/// What the user asked for: an index into [`list`]'s order, or part of an adapter's name.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterChoice {
    /// The best by device type: discrete, then integrated, virtual, CPU.
    Best,
    Index(usize),
    /// Case-insensitive substring of the adapter name.
    Name(String),
}

/// The choice as the user wrote it (`--adapter` or KILN_ADAPTER), for messages.
impl std::fmt::Display for AdapterChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterChoice::Best => write!(f, "the best adapter"),
            AdapterChoice::Index(i) => write!(f, "{i}"),
            AdapterChoice::Name(name) => write!(f, "{name}"),
        }
    }
}

impl AdapterChoice {
    /// Parses `--adapter`'s value: a number is an index, anything else a name.
    pub fn parse(text: &str) -> Self {
        match text.trim().parse::<usize>() {
            Ok(i) => AdapterChoice::Index(i),
            Err(_) if text.trim().is_empty() => AdapterChoice::Best,
            Err(_) => AdapterChoice::Name(text.trim().to_string()),
        }
    }

    /// The explicit choice if given, else `KILN_ADAPTER`, else the best adapter.
    pub fn from_flag_or_env(flag: Option<&str>) -> Self {
        match flag {
            Some(text) => Self::parse(text),
            None => std::env::var("KILN_ADAPTER").map(|v| Self::parse(&v)).unwrap_or(AdapterChoice::Best),
        }
    }
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, in a stable order (the one `--adapter INDEX` refers to).
pub fn list(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        (type_rank(info.device_type), info.name.clone(), format!("{:?}", info.backend))
    });
    adapters
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(crate) fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

pub(crate) fn choose(adapters: Vec<wgpu::Adapter>, choice: &AdapterChoice) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter);
    }
    let names = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("[{i}] {}", describe(&a.get_info())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match choice {
        AdapterChoice::Best => Some(0),
        AdapterChoice::Index(i) => (*i < adapters.len()).then_some(*i),
        AdapterChoice::Name(name) => {
            let name = name.to_lowercase();
            adapters.iter().position(|a| a.get_info().name.to_lowercase().contains(&name))
        }
    };
    match found {
        Some(i) => Ok(adapters.into_iter().nth(i).expect("index checked above")),
        None => Err(Error::AdapterNotFound { wanted: choice.to_string(), available: names() }),
    }
}
