//! The image's `/usr`, shared read-only by its containers straight from the image's layer.
//!
//! Each container's root filesystem is a union mount of its own, and on the `fuse-overlayfs`
//! storage driver every container has its own FUSE daemon and its own page cache: each new
//! sandbox reads the ~800 Python modules its kernel imports through FUSE from cold. Measured
//! here, `import ipykernel.kernelapp` takes 0.85-1.5 s in a new container, 0.55 s a second time
//! in the same one. An image of one layer (what `kernelbox image build` makes) has its whole
//! tree in that layer's directory on the daemon's host, so its `/usr` (every program and
//! library) is bind-mounted read-only from there: one page cache for all of the image's
//! sandboxes, and no FUSE on the path. Everything else (`/home`, `/tmp`, `/etc`, `/workspace`)
//! stays in the container's own writable layer.
//!
//! Nothing changes for the sandbox: `/usr` is root's and the sandbox user could never write it;
//! now nobody in the container can (a read-only bind, and no capability to remount it). Images
//! of several layers, and storage drivers that do not expose the layer's directory, run as
//! before.

use bollard::models::{
    ImageInspect, Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountType,
};

/// Storage drivers whose image `UpperDir` is the layer's own tree on the daemon's host.
const LAYER_DIR_DRIVERS: [&str; 2] = ["overlay2", "fuse-overlayfs"];
/// Where the tree is mounted in the container.
const TARGET: &str = "/usr";

/// The mount that shares `image`'s `/usr`, when the image is one layer on a driver that keeps
/// its tree in a directory; `None` otherwise (the container then reads `/usr` from its own root).
pub(super) fn usr_mount(image: &ImageInspect) -> Option<Mount> {
    let layers = image.root_fs.as_ref()?.layers.as_ref()?;
    if layers.len() != 1 {
        return None;
    }
    let driver = image.graph_driver.as_ref()?;
    if !LAYER_DIR_DRIVERS.contains(&driver.name.as_str()) || driver.data.contains_key("LowerDir") {
        return None;
    }
    let layer = driver.data.get("UpperDir")?;
    if !layer.starts_with('/') {
        return None;
    }
    Some(Mount {
        target: Some(TARGET.to_string()),
        source: Some(format!("{}{TARGET}", layer.trim_end_matches('/'))),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        // Docker refuses a bind from inside its root unless mounts made there later reach the
        // container (rslave): they do not matter here, and nothing flows back out.
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RSLAVE),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{DriverData, ImageInspectRootFs};

    use super::*;

    fn image(driver: &str, layers: usize, data: &[(&str, &str)]) -> ImageInspect {
        ImageInspect {
            root_fs: Some(ImageInspectRootFs {
                typ: "layers".into(),
                layers: Some((0..layers).map(|n| format!("sha256:{n}")).collect()),
            }),
            graph_driver: Some(DriverData {
                name: driver.into(),
                data: data
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect::<HashMap<_, _>>(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_single_layer_image_shares_its_usr_read_only() {
        let inspect = image(
            "fuse-overlayfs",
            1,
            &[("UpperDir", "/var/lib/docker/fuse-overlayfs/abc/diff")],
        );
        let mount = usr_mount(&inspect).expect("a mount");
        assert_eq!(
            mount.source.as_deref(),
            Some("/var/lib/docker/fuse-overlayfs/abc/diff/usr")
        );
        assert_eq!(mount.target.as_deref(), Some("/usr"));
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.typ, Some(MountType::BIND));
    }

    #[test]
    fn layered_images_and_other_drivers_keep_their_own_usr() {
        let upper = [("UpperDir", "/var/lib/docker/overlay2/abc/diff")];
        assert!(usr_mount(&image("overlay2", 2, &upper)).is_none());
        assert!(
            usr_mount(&image(
                "overlay2",
                1,
                &[upper[0], ("LowerDir", "/var/lib/docker/overlay2/def/diff")]
            ))
            .is_none()
        );
        assert!(usr_mount(&image("vfs", 1, &upper)).is_none());
        assert!(usr_mount(&image("overlay2", 1, &[])).is_none());
        assert!(usr_mount(&image("overlay2", 1, &[("UpperDir", "relative/diff")])).is_none());
        assert!(usr_mount(&ImageInspect::default()).is_none());
    }
}
