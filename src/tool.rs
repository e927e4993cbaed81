//! NimbusImage's two retrain tools, each training one model family: "Cellpose retrain" (CPnet,
//! cellpose 3) and "Cellpose-SAM retrain" (Cellpose-SAM, cellpose 4). A request is told to a
//! tool once, where it comes in ([`crate::job::JobRequest`]); past that point the tool is a
//! value, never derived again from an image name, a job type or the fields sent.

use crate::model::ModelFamily;

/// One of the two retrain tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// "Cellpose retrain": CPnet, cellpose 3.1.1.2.
    Cellpose,
    /// "Cellpose-SAM retrain": Cellpose-SAM, cellpose 4.2.1.1.
    CellposeSam,
}

impl Tool {
    /// The model family the tool trains.
    pub fn family(self) -> ModelFamily {
        match self {
            Tool::Cellpose => ModelFamily::Cpnet,
            Tool::CellposeSam => ModelFamily::Cpsam,
        }
    }

    /// The tool a worker image is named for: NimbusImage names the Cellpose-SAM worker
    /// `...cellposesam_train...` (a name with `cellpose-sam` counts too); any other name is the
    /// Cellpose tool's.
    pub(crate) fn named_in(image: &str) -> Tool {
        let lower = image.to_ascii_lowercase();
        if lower.contains("cellposesam") || lower.contains("cellpose-sam") {
            Tool::CellposeSam
        } else {
            Tool::Cellpose
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_name_says_its_tool() {
        assert_eq!(Tool::named_in("nimbusimage/cellposesam_train:latest"), Tool::CellposeSam);
        assert_eq!(Tool::named_in("lab/Cellpose-SAM-worker"), Tool::CellposeSam);
        assert_eq!(Tool::named_in("nimbusimage/cellpose_train:latest"), Tool::Cellpose);
        assert_eq!(Tool::CellposeSam.family(), ModelFamily::Cpsam);
    }
}
