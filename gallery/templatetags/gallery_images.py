"""``{% gallery_image image %}``: an <img> with size, blind alt text and a content-addressed URL.

``{% image_display image as shown %}`` gives the same as a value ({url, width, height, alt, original_url,
pixelated}) for pages that lay the image out themselves.
"""

from __future__ import annotations

from django import template

from gallery.models import Image
from gallery.selectors import ImageDisplay, image_display

register = template.Library()


@register.simple_tag(name="image_display")
def image_display_tag(image: Image, alt: str | None = None) -> ImageDisplay:
    return image_display(image, alt=alt)


@register.inclusion_tag("gallery/_image.html")
def gallery_image(image: Image, alt: str | None = None, css_class: str = "") -> dict[str, object]:
    return {"shown": image_display(image, alt=alt), "css_class": css_class}
