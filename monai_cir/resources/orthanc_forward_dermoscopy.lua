-- Orthanc: forward every stable dermoscopy study to the monai-cir DICOM node, once.
--
-- Install: copy this file next to orthanc.json, list it in "LuaScripts", and declare the service
-- in "DicomModalities" under the name TARGET, e.g. "monaicir": ["MONAICIR", "10.0.0.7", 11112].
-- "StableAge" (seconds without a new instance) decides when a study is complete.
--
-- A study is sent when one of its series has Modality DMS (dermoscopy) or XC (older archives'
-- VL photographs), unless it is a case of the similar-cases library (its Study Description starts
-- with LIBRARY_PREFIX, as `monai-cir dicomize` writes it), and not sent again once it holds an
-- instance the service stored (its answer): without that rule the answer would make the study
-- "stable" again and loop.

local TARGET = 'monaicir'      -- the DicomModalities entry of the service
local SERVICE_AET = 'MONAICIR' -- the AE title the service stores its answers with
local LIBRARY_PREFIX = 'monai-cir case'

local function IsDermoscopy(studyId)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'DMS' or modality == 'XC' then
      return true
    end
  end
  return false
end

local function AlreadyAnswered(studyId)
  local instances = ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))
  for _, instance in pairs(instances) do
    local ok, aet = pcall(RestApiGet, '/instances/' .. instance['ID'] .. '/metadata/RemoteAET')
    if ok and aet == SERVICE_AET then
      return true
    end
  end
  return false
end

function OnStableStudy(studyId, tags, metadata)
  local description = tags['StudyDescription'] or ''
  if string.sub(description, 1, string.len(LIBRARY_PREFIX)) == LIBRARY_PREFIX then
    return
  end
  if not IsDermoscopy(studyId) then
    return
  end
  if AlreadyAnswered(studyId) then
    return
  end
  print('monai-cir: forwarding study ' .. studyId .. ' to ' .. TARGET)
  RestApiPost('/modalities/' .. TARGET .. '/store', DumpJson({ Resources = { studyId }, Asynchronous = true }, true))
end
