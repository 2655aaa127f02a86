//! Closed sets of metric label values as enums: each variant has one fixed text, so a label
//! can never carry caller input and the hot path never allocates one. A leaf.

/// Declares a `Copy` enum whose variants encode as the given label texts, with `ALL` (every
/// value, for series that must exist from the start) and `as_str`.
macro_rules! label_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

pub(crate) use label_enum;

/// A configuration name (route, tenant) as a label: cloning it shares the text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(std::sync::Arc<str>);

impl Name {
    pub fn new(text: &str) -> Name {
        Name(text.into())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}
