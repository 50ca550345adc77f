"""Display derivatives served fast and blind: content-addressed URLs, long cache, size, no generator names."""

from __future__ import annotations

import io
import re

import pytest
from django.template import Context, Template
from PIL import Image as PILImage

from gallery.models import Category
from gallery.selectors import image_display
from gallery.services.images import image_register
from gallery.services.prompts import prompt_ensure

from .conftest import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def images(itercomp_generators):
    prompt, _ = prompt_ensure(text="a bird above a horse", category=Category.objects.get(slug="spatial"))
    big = image_register(
        prompt=prompt, generator=itercomp_generators["flux"], image=png_bytes(1, (1024, 768))
    ).image
    small = image_register(
        prompt=prompt, generator=itercomp_generators["instancediffusion"], image=png_bytes(2, (64, 48))
    ).image
    return big, small


def test_display_urls_sizes_and_alt_never_name_the_generator(images):
    big, small = images
    names = ["flux", "FLUX", "instancediffusion", "InstanceDiffusion", "sd15", "sdxl", "sd3", "rpg"]
    for image in images:
        shown = image_display(image)
        for text in (shown.url, shown.alt, shown.original_url):
            assert not any(name.lower() in text.lower() for name in names), text
        assert re.fullmatch(
            r"/gallery/files/display/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}-512\.webp", shown.url
        )
        assert shown.alt == "Candidate image for: a bird above a horse"
    assert (image_display(big).width, image_display(big).height, image_display(big).pixelated) == (
        512,
        384,
        False,
    )
    assert (image_display(small).width, image_display(small).height, image_display(small).pixelated) == (
        64,
        48,
        True,
    )


def test_derivative_is_served_with_immutable_cache_headers_and_revalidates(images, client, make_user):
    big, _ = images
    shown = image_display(big)
    assert client.get(shown.url).status_code == 302  # login required
    client.force_login(make_user("annotator"))
    response = client.get(shown.url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/webp"
    assert response["Cache-Control"] == "private, max-age=31536000, immutable"
    body = b"".join(response.streaming_content)
    assert PILImage.open(io.BytesIO(body)).size == (512, 384)
    again = client.get(shown.url, headers={"If-None-Match": response["ETag"]})
    assert again.status_code == 304
    original = client.get(shown.original_url)
    assert original.status_code == 200 and original["Content-Type"] == "image/png"
    assert b"".join(original.streaming_content) == png_bytes(1, (1024, 768))


def test_only_gallery_keys_are_served(images, client, make_user):
    client.force_login(make_user("annotator"))
    assert client.get("/gallery/files/checkpoints/x.pt").status_code == 404
    assert client.get("/gallery/files/images/../../settings.py").status_code == 404
    assert client.get(f"/gallery/files/images/aa/bb/{'a' * 64}.png").status_code == 404  # well-formed, absent


def test_template_tag_renders_a_sized_blind_img(images):
    big, small = images
    html = Template("{% load gallery_images %}{% gallery_image image alt='Image 2 of 6' %}").render(
        Context({"image": small})
    )
    shown = image_display(small)
    assert f'src="{shown.url}"' in html and 'width="64" height="48"' in html
    assert 'alt="Image 2 of 6"' in html and "image-rendering: pixelated" in html
    html_big = Template(
        "{% load gallery_images %}{% image_display image as d %}{{ d.width }}x{{ d.height }}"
    ).render(Context({"image": big}))
    assert html_big == "512x384"
