//! What `edit apply` writes, as one transaction: a patched model directory and/or a delta file,
//! both staged as temporaries and renamed into place together, or neither.

use std::path::{Path, PathBuf};

use super::{check_out_dir, stage_model_dir, write_delta_file};
use crate::config::ModelConfig;
use crate::editing::{DeltaMeta, Deltas};
use crate::error::{Error, Result};
use crate::fsutil::{check_file_target, check_writable_ancestor, normalize, parent_dir, Outputs};
use crate::hub::ModelFiles;

/// Where an edit goes: a patched copy of the model (`out`), the weight delta (`delta_out`), or both.
#[derive(Clone, Copy, Debug)]
pub struct EditOutputs<'a> {
    pub out: Option<&'a Path>,
    pub delta_out: Option<&'a Path>,
    /// Replace existing outputs.
    pub force: bool,
}

impl EditOutputs<'_> {
    /// The delta file's path inside `out`, when it is to be written there (it then lands with
    /// the directory).
    fn delta_in_out(&self) -> Option<PathBuf> {
        let (o, d) = (normalize(self.out?), normalize(self.delta_out?));
        d.strip_prefix(&o).ok().filter(|r| !r.as_os_str().is_empty()).map(Path::to_path_buf)
    }

    /// Checks, before anything is read, that there is something to write, that the outputs'
    /// paths differ and that the delta file can be written ([`check_file_target`]).
    pub fn check_paths(&self) -> Result<()> {
        if self.out.is_none() && self.delta_out.is_none() {
            return Err(Error::Input("nothing to write: pass --out DIR (a patched model) and/or --delta-out FILE.safetensors (the weight delta)".into()));
        }
        if let (Some(o), Some(d)) = (self.out, self.delta_out) {
            if normalize(o) == normalize(d) {
                return Err(Error::Input(format!(
                    "--out and --delta-out are the same path {}: the model directory and the delta file need different paths",
                    o.display()
                )));
            }
        }
        // A delta inside --out lands with the directory; --out's own check covers it.
        if let Some(d) = self.delta_out.filter(|_| self.delta_in_out().is_none()) {
            check_file_target(d, self.force, "--delta-out")?;
        }
        Ok(())
    }

    /// Checks, once the model is found, that `out` can hold its patched copy ([`check_out_dir`]).
    pub fn check_model_dir(&self, files: &ModelFiles) -> Result<()> {
        if let Some(out) = self.out {
            check_out_dir(files, out, self.force)?;
            check_writable_ancestor(parent_dir(out), "--out", out)?;
        }
        Ok(())
    }

    /// Writes the patched model and/or the delta, all or nothing.
    pub fn write(&self, files: &ModelFiles, cfg: &ModelConfig, deltas: &Deltas, meta: &DeltaMeta) -> Result<()> {
        let mut outputs = Outputs::new();
        let mut staged_dir = None;
        if let Some(dir) = self.out {
            let report = stage_model_dir(files, cfg, deltas, 1.0, dir, self.force, &mut outputs)
                .map_err(|e| e.context(format!("cannot write the patched model to {}", dir.display())))?;
            staged_dir = Some(report.staged);
        }
        if let Some(path) = self.delta_out {
            let tmp = match (self.delta_in_out(), &staged_dir) {
                (Some(rel), Some(staged)) => staged.join(rel),
                _ => outputs.stage(path)?,
            };
            write_delta_file(&tmp, cfg, deltas, meta).map_err(|e| e.context(format!("cannot write {}", path.display())))?;
        }
        outputs.commit().map_err(|e| e.context("cannot move the outputs into place"))?;
        if let Some(dir) = self.out {
            tracing::info!("patched model written to {}", dir.display());
        }
        if let Some(path) = self.delta_out {
            tracing::info!("delta written to {}", path.display());
        }
        Ok(())
    }
}
