//! Users and credentials: `GET /user/me`, login with HTTP Basic (`GET /user/authentication`),
//! `POST /user` and `POST /api_key` (how a fresh server, or the mock, is seeded).

use serde::Deserialize;

use super::auth::{Auth, AuthToken, Secret};
use super::client::{Call, GirderClient, GirderConfig};
use super::error::GirderError;

/// A Girder user as `GET /user/me` returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: String,
    pub login: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(rename = "firstName", default)]
    pub first_name: Option<String>,
    #[serde(rename = "lastName", default)]
    pub last_name: Option<String>,
}

/// Fields of `POST /user`.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub login: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub password: Secret,
}

/// An API key from `POST /api_key`.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKey {
    #[serde(rename = "_id")]
    pub id: String,
    pub key: Secret,
    pub name: String,
    #[serde(rename = "tokenDuration", default)]
    pub token_duration_days: Option<f64>,
}

/// `client.users()`.
pub struct Users<'a> {
    pub(crate) client: &'a GirderClient,
}

impl GirderClient {
    pub fn users(&self) -> Users<'_> {
        Users { client: self }
    }

    /// Logs in with HTTP Basic (`GET /user/authentication`) and returns a client holding the
    /// session token, plus the user.
    pub async fn login(
        config: GirderConfig,
        login: &str,
        password: &Secret,
    ) -> Result<(GirderClient, User), GirderError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "authToken")]
            auth_token: AuthToken,
            user: User,
        }
        let anonymous = GirderClient::new(config, Auth::Anonymous)?;
        let mut call = Call::get("user/authentication").anonymous();
        call.basic = Some((login.to_string(), password.clone()));
        let answer: Answer = anonymous.json(call).await?;
        Ok((anonymous.with_token(answer.auth_token.token), answer.user))
    }
}

impl Users<'_> {
    /// `GET /user/me`. Girder answers `null` (not 401) when the token is missing or invalid;
    /// that becomes [`GirderError::Unauthorized`].
    #[tracing::instrument(skip_all)]
    pub async fn me(&self) -> Result<User, GirderError> {
        let user: Option<User> = self.client.json(Call::get("user/me")).await?;
        user.ok_or_else(|| GirderError::Unauthorized {
            method: "GET".into(),
            path: "user/me".into(),
            message: "Girder does not know this token (user/me is null)".into(),
        })
    }

    /// `POST /user`. On an empty server the first user becomes the site admin; when this client is
    /// anonymous Girder also logs the new user in, and that token is returned.
    pub async fn create(&self, user: &NewUser) -> Result<(User, Option<Secret>), GirderError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(flatten)]
            user: User,
            #[serde(rename = "authToken", default)]
            auth_token: Option<AuthToken>,
        }
        let call = Call::post("user")
            .form("login", &user.login)
            .form("email", &user.email)
            .form("firstName", &user.first_name)
            .form("lastName", &user.last_name)
            .form("password", user.password.expose());
        let created: Created = self.client.json(call).await?;
        Ok((created.user, created.auth_token.map(|t| t.token)))
    }

    /// `POST /api_key` for the current user; `token_duration_days` caps tokens made from it.
    pub async fn create_api_key(
        &self,
        name: &str,
        token_duration_days: Option<f64>,
    ) -> Result<ApiKey, GirderError> {
        let mut call = Call::post("api_key").form("name", name).form("active", "true");
        if let Some(days) = token_duration_days {
            call = call.form("tokenDuration", days);
        }
        self.client.json(call).await
    }
}
