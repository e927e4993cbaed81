//! The one rule for a model's name, shared by the CLI (`train --model-name`) and the training job
//! (Output Model Name): the name becomes a file name (`<dir>/models/<name>`, the job's work dir)
//! and a Girder item name, so it must be one plain path component.

/// Longest name, in characters (not bytes: 150 x `é` is 150 characters).
pub const MAX_NAME_CHARS: usize = 200;

/// Checks a model name; the error completes a sentence that starts with the field's name.
pub fn check_model_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty; give the model a name such as my_cells_v2".into());
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!("`{name}` contains a slash; use a plain name such as my_cells_v2"));
    }
    if name.chars().all(|c| c == '.') {
        return Err(format!("`{name}` names a folder, not a file; use a plain name such as my_cells_v2"));
    }
    if name.contains("..") {
        return Err(format!("`{name}` contains `..`; use a plain name such as my_cells_v2"));
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters; use a plain name such as my_cells_v2".into());
    }
    if name != name.trim() {
        return Err(format!("`{name}` starts or ends with spaces; remove them"));
    }
    let n = name.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(format!("is {n} characters long; use at most {MAX_NAME_CHARS}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_slashes_and_long_names_are_refused() {
        for bad in ["", " ", ".", "..", "...", "a/b", "a\\b", "a..b", "x\u{7}y", " pad", "pad "] {
            assert!(check_model_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_model_name(&"a".repeat(201)).unwrap_err().contains("201 characters"));
    }

    #[test]
    fn the_length_limit_counts_characters() {
        assert!(check_model_name(&"é".repeat(150)).is_ok(), "150 characters, 300 bytes");
        assert!(check_model_name(&"é".repeat(200)).is_ok());
        assert!(check_model_name(&"é".repeat(201)).is_err());
        assert!(check_model_name(".hidden_but_a_file").is_ok());
        assert!(check_model_name("my cells v2").is_ok());
    }
}
