//! What a TIFF says about its axes beyond Y, X and channels. A multi-page TIFF is read as the
//! channels of one 2-D image; a Z-stack or a time series saved as a hyperstack would silently
//! become dozens of "channels", so the axes its writer recorded are checked first: ImageJ's
//! description (`slices=`, `frames=`; ImageJ always orders TZCYX), tifffile's shaped description
//! (`{"shape": [...], "axes": "..."}`) and OME-XML (`SizeZ`, `SizeT`).

use serde_json::Value;

/// `Err(what the file holds)` when the description declares more than one plane per channel:
/// a Z or T axis longer than 1, or (tifffile without axis names) more than one axis besides
/// Y and X. `page` is the first page's (height, width).
pub(crate) fn check(description: &str, page: (usize, usize)) -> Result<(), String> {
    let d = description.trim_start();
    if d.starts_with("ImageJ=") {
        return imagej(d);
    }
    if d.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(d) {
            return tifffile(&v, page);
        }
        return Ok(());
    }
    if d.contains("<OME") {
        return ome(d);
    }
    Ok(())
}

fn imagej(d: &str) -> Result<(), String> {
    let get = |key: &str| -> usize {
        d.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(1)
    };
    let (c, z, t) = (get("channels"), get("slices"), get("frames"));
    if z > 1 || t > 1 {
        return Err(format!(
            "an ImageJ hyperstack of {t} time point(s) x {z} z-slice(s) x {c} channel(s) (axes TZCYX)"
        ));
    }
    Ok(())
}

fn tifffile(v: &Value, (h, w): (usize, usize)) -> Result<(), String> {
    let Some(shape) = v.get("shape").and_then(Value::as_array) else { return Ok(()) };
    let shape: Vec<u64> = shape.iter().filter_map(Value::as_u64).collect();
    let shown = format!("{shape:?}");
    if let Some(axes) = v.get("axes").and_then(Value::as_str) {
        if axes.chars().count() != shape.len() {
            return Ok(());
        }
        let named: Vec<(char, u64)> = axes.chars().zip(shape.iter().copied()).collect();
        if let Some((a, n)) = named.iter().find(|(a, n)| matches!(a, 'Z' | 'T') && *n > 1) {
            let axis = if *a == 'Z' { "z-slices" } else { "time points" };
            return Err(format!("a stack with {n} {axis} (tifffile axes {axes}, shape {shown})"));
        }
        let extra = named.iter().filter(|(a, n)| !matches!(a, 'Y' | 'X' | 'S') && *n > 1).count();
        if extra > 1 {
            return Err(format!("an array with axes {axes} (shape {shown})"));
        }
        return Ok(());
    }
    // no axis names: the dims before the page's Y, X are pages or planar samples; more than one
    // of them longer than 1 is a stack of some kind
    let Some(yx) =
        (0..shape.len().saturating_sub(1)).rev().find(|&i| (shape[i], shape[i + 1]) == (h as u64, w as u64))
    else {
        return Ok(());
    };
    if shape[..yx].iter().filter(|&&n| n > 1).count() > 1 {
        return Err(format!("a {}-D array of shape {shown}", shape.len()));
    }
    Ok(())
}

fn ome(d: &str) -> Result<(), String> {
    let Ok(doc) = roxmltree::Document::parse(d) else { return Ok(()) };
    let Some(pixels) = doc.descendants().find(|n| n.has_tag_name("Pixels")) else { return Ok(()) };
    let size = |k: &str| pixels.attribute(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1);
    let (c, z, t) = (size("SizeC"), size("SizeZ"), size("SizeT"));
    if z > 1 || t > 1 {
        let order = pixels.attribute("DimensionOrder").unwrap_or("?");
        return Err(format!(
            "an OME-TIFF of {t} time point(s) x {z} z-slice(s) x {c} channel(s) (DimensionOrder {order})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_named_and_channel_only_files_pass() {
        let ij = "ImageJ=1.11a\nimages=8\nchannels=2\nslices=2\nframes=2\nhyperstack=true\nmode=grayscale";
        assert!(check(ij, (8, 8)).unwrap_err().contains("2 time point(s) x 2 z-slice(s) x 2 channel(s)"));
        assert!(check("ImageJ=1.11a\nimages=3\nchannels=3\nmode=composite", (8, 8)).is_ok());
        let tzcyx = r#"{"shape": [2, 2, 2, 8, 8], "axes": "TZCYX"}"#;
        assert!(check(tzcyx, (8, 8)).unwrap_err().contains("TZCYX"));
        assert!(check(r#"{"shape": [3, 8, 8]}"#, (8, 8)).is_ok());
        assert!(check(r#"{"shape": [2, 8, 8, 3]}"#, (8, 8)).is_ok());
        assert!(check(r#"{"shape": [2, 2, 8, 8]}"#, (8, 8)).unwrap_err().contains("[2, 2, 8, 8]"));
        assert!(check(r#"{"shape": [4, 8, 8], "axes": "CYX"}"#, (8, 8)).is_ok());
        let ome = |z: u32| {
            format!(
                r#"<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="8" SizeY="8" SizeC="2" SizeZ="{z}" SizeT="1"/></Image></OME>"#
            )
        };
        assert!(check(&ome(1), (8, 8)).is_ok());
        assert!(check(&ome(5), (8, 8)).unwrap_err().contains("5 z-slice(s)"));
        assert!(check("just a caption", (8, 8)).is_ok());
    }
}
