"""``/v1/containers`` and their files, as the openai SDK calls them."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from agentide.api import containers
from agentide.api.auth import ApiRequest
from agentide.api.errors import ApiError, api_view, error_response
from agentide.lib.http import stream_response
from agentide.lib.uploads import upload_limit


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object; ApiError 400 for anything else."""
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


@api_view(("GET", "POST"))
def container_collection(request: ApiRequest) -> HttpResponse:
    if request.method == "POST":
        container = containers.create_container(
            request.api, **containers.clean_create(json_body(request))
        )
        return JsonResponse(containers.container_object(container))
    limit, ascending, after = containers.page_params(request.GET)
    rows, more = containers.list_containers(
        request.api, limit=limit, ascending=ascending, after=after,
        name=request.GET.get("name", "")[:256],
    )
    return JsonResponse(
        containers.page_object([containers.container_object(c) for c in rows], has_more=more)
    )


@api_view(("GET", "DELETE"))
def container_detail(request: ApiRequest, container_id: str) -> HttpResponse:
    container = containers.get_container(request.api, container_id)
    if request.method == "DELETE":
        containers.delete_container(container)
        return JsonResponse(
            {"id": container.public_id, "object": "container.deleted", "deleted": True}
        )
    return JsonResponse(containers.container_object(container))


def upload_refused(request: HttpRequest, message: str, *args: Any, **kwargs: Any) -> HttpResponse:
    """A 413 in OpenAI's shape for an upload over the site's limit (nothing was kept)."""
    return error_response(ApiError(413, message, param="file", code="file_too_large"))


@api_view(("GET", "POST"))
@upload_limit(containers.max_upload_bytes, refuse=upload_refused)
def file_collection(request: ApiRequest, container_id: str) -> HttpResponse:
    container = containers.get_container(request.api, container_id)
    if request.method == "POST":
        if request.content_type != "multipart/form-data":
            body = json_body(request)
            if body.get("file_id"):
                raise ValidationError({"file_id": (
                    "file_id (the OpenAI Files API) is not supported: upload the file's bytes "
                    "as multipart 'file' instead."
                )})
        elif request.POST.get("file_id"):
            raise ValidationError({"file_id": (
                "file_id (the OpenAI Files API) is not supported: send the file's bytes as "
                "'file' instead."
            )})
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError({"file": "Upload the file as multipart form field 'file'."})
        file = containers.upload_file(request.api, container, upload)
        return JsonResponse(containers.file_object(file))
    containers.touch_if_running(container)
    limit, ascending, after = containers.page_params(request.GET)
    rows, more = containers.list_container_files(
        container, limit=limit, ascending=ascending, after=after
    )
    return JsonResponse(
        containers.page_object([containers.file_object(f) for f in rows], has_more=more)
    )


@api_view(("GET", "DELETE"))
def file_detail(request: ApiRequest, container_id: str, file_id: str) -> HttpResponse:
    container = containers.get_container(request.api, container_id)
    file = containers.get_file(container, file_id)
    if request.method == "DELETE":
        containers.delete_file(container, file)
        return JsonResponse({"id": file_id, "object": "container.file.deleted", "deleted": True})
    containers.touch_if_running(container)
    return JsonResponse(containers.file_object(file))


@api_view(("GET",))
def file_content(request: ApiRequest, container_id: str, file_id: str) -> HttpResponseBase:
    container = containers.get_container(request.api, container_id)
    file = containers.get_file(container, file_id)
    containers.touch_if_running(container)
    stream = containers.open_file(file)
    response = stream_response(
        request, stream.chunks, stream.close, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(stream.size)
    filename = posixpath.basename(file.path).replace('"', "")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
