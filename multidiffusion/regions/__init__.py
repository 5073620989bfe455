"""Region prompts (paper Sec. 4.2): :class:`Region` and its masks, boxes and segmentation maps
(:mod:`.masks`), the layout on the latent grid (:mod:`.layout`), bootstrapping (:mod:`.bootstrap`),
scene files (:mod:`.scene`) and previews (:mod:`.preview`)."""

from multidiffusion.regions.layout import MAX_REGIONS, Region, RegionLayout, region_layout

__all__ = ["MAX_REGIONS", "Region", "RegionLayout", "region_layout"]
